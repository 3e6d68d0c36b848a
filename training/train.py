"""Train the multi-scale generator.

    python training/train.py --config training/configs/lite.yaml \\
        --data ../shared/data/monuseg2018-train --out runs/lite [--set data.batch=8 ...] [--resume runs/lite/last.pt]

Writes into --out: config.yaml (resolved), command.txt, log.csv, curves.png,
last.pt (resumable) and best.pt (best validation PSNR-Y, averaged over scales).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from training import checkpoint
from training.config import Config, ConfigError, load, to_dict
from training.data import (
    BatchSampler, DataError, curriculum_threshold, list_sources, load_rgb, open_sources, scale_levels, split_by_patient,
)
from training.evaluate import SCALE_NAMES, bicubic_up, psnr, to_y, torch_upscaler
from training.losses import GeneratorLoss, discriminator_loss
from training.model import MultiScaleGenerator, PatchDiscriminator, VGGFeatures, VGGWeightsMissing, describe


def to_tensors(batch: list[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    return [torch.from_numpy(b).to(device).permute(0, 3, 1, 2).float().div_(255) for b in batch]


def learning_rate(cfg: Config, step: int) -> float:
    epoch = step // cfg.run.steps_per_epoch
    return max(cfg.optim.min_lr, cfg.optim.lr * cfg.optim.decay ** (epoch // cfg.optim.decay_every_epochs))


@dataclasses.dataclass
class ValidationSet:
    """Validation images as [5X, 10X, 20X, 40X] uint8, optionally centre-cropped."""

    names: list[str]
    levels: list[list[np.ndarray]]

    @classmethod
    def from_paths(cls, paths: list[Path], crop5: int | None, jpeg_quality: int | None = None) -> "ValidationSet":
        levels = []
        for p in paths:
            img = load_rgb(p)
            if crop5:  # the centre, on the 8-px grid
                c, (h, w) = crop5 * 8, img.shape[:2]
                y0, x0 = ((h - c) // 16) * 8, ((w - c) // 16) * 8
                img = img[y0:y0 + c, x0:x0 + c]
            levels.append(scale_levels(img, jpeg_quality))
        return cls([p.name for p in paths], levels)

    def psnr_y(self, upscale) -> list[float]:
        """Mean PSNR-Y per scale (10X, 20X, 40X); ``upscale`` maps 5X uint8 to the three outputs."""
        scores = np.zeros(3)
        for lv in self.levels:
            for i, out in enumerate(upscale(lv[0])):
                scores[i] += psnr(to_y(out), to_y(lv[i + 1]))
        return list(scores / max(1, len(self.levels)))

    def bicubic_psnr_y(self) -> list[float]:
        return self.psnr_y(lambda img5: [bicubic_up(img5, 2 ** (i + 1)) for i in range(3)])


def plot_curves(log_path: Path, png_path: Path, bicubic: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(log_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    steps = [int(r["step"]) for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(steps, [float(r["loss"]) for r in rows])
    a.set_xlabel("step")
    a.set_ylabel("training loss (epoch mean)")
    a.set_yscale("log")
    for i, name in enumerate(SCALE_NAMES):
        line, = b.plot(steps, [float(r[f"val_psnr_y_{name}"]) for r in rows], label=f"SR {name}")
        if bicubic:
            b.axhline(bicubic[i], ls="--", color=line.get_color(), label=f"bicubic {name}")
    b.set_xlabel("step")
    b.set_ylabel("validation PSNR-Y (dB)")
    b.legend(fontsize=7)
    fig.tight_layout()
    tmp = png_path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(png_path)


LOG_FIELDS = ["step", "epoch", "lr", "loss", "l1", "ssim", "fft", "perceptual", "adversarial", "d_loss",
              *[f"val_psnr_y_{s}" for s in SCALE_NAMES], "val_psnr_y_mean", "threshold", "seconds"]


def train(cfg: Config, data_dir: Path, out_dir: Path, resume: Path | None = None, device: str | None = None,
          command: str = "", progress: bool = True) -> Path:
    """Train as ``cfg`` says; returns the path of the best checkpoint."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    torch.manual_seed(cfg.run.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    (out_dir / "command.txt").write_text(command + "\n")

    train_paths, val_paths = split_by_patient(list_sources(data_dir), cfg.data.val_patients, cfg.data.val_count)
    sampler = BatchSampler(open_sources(train_paths, cfg.data.jpeg_quality), cfg.data.crop, cfg.data.batch, seed=cfg.run.seed)
    val = ValidationSet.from_paths(val_paths, cfg.data.val_crop, cfg.data.jpeg_quality)
    bicubic = val.bicubic_psnr_y() if val.levels else []

    model = MultiScaleGenerator(cfg.model).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas)
    vgg = VGGFeatures(cfg.loss.vgg_weights).to(dev) if cfg.loss.perceptual else None
    loss_fn = GeneratorLoss(cfg.loss, vgg)
    disc = d_opt = None
    if cfg.loss.adversarial:
        disc = PatchDiscriminator().to(dev)
        d_opt = torch.optim.Adam(disc.parameters(), lr=cfg.optim.d_lr, betas=cfg.optim.d_betas)

    step, best = 0, -float("inf")
    if resume:
        state = checkpoint.load(resume)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if disc is not None:
            disc.load_state_dict(state["discriminator"])
            d_opt.load_state_dict(state["d_optimizer"])
        step, best = state["step"], state["best_val"]
        sampler.rng.bit_generator.state = state["rng"]["sampler"]
        torch.set_rng_state(state["rng"]["torch"])

    total = cfg.run.epochs * cfg.run.steps_per_epoch
    amp = dev.type == "cuda"
    log_path = out_dir / "log.csv"
    if not (resume and log_path.exists()):
        with open(log_path, "w", newline="") as f:
            csv.writer(f).writerow(LOG_FIELDS)
    meta = {"name": cfg.name, "config": to_dict(cfg), "val_images": val.names, "train_images": [p.name for p in train_paths],
            "bicubic_val_psnr_y": bicubic, "description": describe(cfg.model)}
    start, sums, n = time.monotonic(), {}, 0
    bar = tqdm(total=total, initial=step, disable=not progress, desc=cfg.name, unit="step", dynamic_ncols=True)
    while step < total:
        epoch = step // cfg.run.steps_per_epoch
        threshold = curriculum_threshold(epoch, cfg.data.curriculum_step, cfg.data.curriculum_every_epochs, cfg.data.curriculum_max) if cfg.data.curriculum else 0.0
        for g in opt.param_groups:
            g["lr"] = learning_rate(cfg, step)
        lr5, *targets = to_tensors(sampler.next(threshold), dev)
        model.train()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            outputs = model(lr5)
            d_loss = None
            if disc is not None:  # alternate: one D step, then one G step
                d_opt.zero_grad(set_to_none=True)
                d_loss = discriminator_loss(disc(targets[-1]), disc(outputs[-1].detach()))
                d_loss.backward()
                d_opt.step()
            loss, parts = loss_fn(outputs, targets, disc(outputs[-1]) if disc is not None else None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        n += 1
        for k, v in {"loss": loss.item(), **parts, **({"d_loss": d_loss.item()} if d_loss is not None else {})}.items():
            sums[k] = sums.get(k, 0.0) + v
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{opt.param_groups[0]['lr']:.1e}")
        out_of_time = cfg.run.max_minutes is not None and time.monotonic() - start > 60 * cfg.run.max_minutes
        if step % cfg.run.steps_per_epoch == 0 or step == total or out_of_time:
            model.eval()
            scores = val.psnr_y(torch_upscaler(model)) if val.levels else [float("nan")] * 3
            mean = float(np.mean(scores))
            row = {"step": step, "epoch": step / cfg.run.steps_per_epoch, "lr": opt.param_groups[0]["lr"],
                   **{k: v / n for k, v in sums.items()}, **{f"val_psnr_y_{s}": v for s, v in zip(SCALE_NAMES, scores)},
                   "val_psnr_y_mean": mean, "threshold": threshold, "seconds": round(time.monotonic() - start, 1)}
            with open(log_path, "a", newline="") as f:
                csv.DictWriter(f, LOG_FIELDS).writerow({k: row.get(k, "") for k in LOG_FIELDS})
            sums, n = {}, 0
            if mean > best or not (out_dir / "best.pt").exists():
                best = max(best, mean)
                checkpoint.save(out_dir / "best.pt", model, step=step, best_val=best, val_psnr_y=scores, **meta)
            checkpoint.save(out_dir / "last.pt", model, step=step, best_val=best, val_psnr_y=scores,
                            optimizer=opt.state_dict(), discriminator=disc.state_dict() if disc else None,
                            d_optimizer=d_opt.state_dict() if d_opt else None,
                            rng={"sampler": sampler.rng.bit_generator.state, "torch": torch.get_rng_state()}, **meta)
            plot_curves(log_path, out_dir / "curves.png", bicubic)
            bar.write(f"step {step}: val PSNR-Y " + " ".join(f"{s} {v:.2f}" for s, v in zip(SCALE_NAMES, scores))
                      + (" (bicubic " + " ".join(f"{v:.2f}" for v in bicubic) + ")" if bicubic else ""))
            if out_of_time:
                bar.write(f"stopping: --max-minutes {cfg.run.max_minutes} reached at step {step}")
                break
    bar.close()
    return out_dir / "best.pt"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Train the multi-scale SR generator.")
    ap.add_argument("--config", type=Path, help="YAML config (training/configs/*.yaml)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a setting, e.g. --set data.batch=8 (repeatable)")
    ap.add_argument("--data", type=Path, required=True, help="folder of 40X tiles and/or whole-slide images")
    ap.add_argument("--out", type=Path, required=True, help="run folder")
    ap.add_argument("--resume", type=Path, help="last.pt of an earlier run")
    ap.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available")
    ap.add_argument("--max-minutes", type=float, help="stop cleanly after this wall time")
    ap.add_argument("--vgg-weights", help="path of torchvision's vgg19-dcbb9e9d.pth for the perceptual loss")
    args = ap.parse_args(argv)
    overrides = list(args.overrides)
    if args.max_minutes is not None:
        overrides.append(f"run.max_minutes={args.max_minutes}")
    if args.vgg_weights:
        overrides.append(f"loss.vgg_weights={args.vgg_weights}")
    try:
        cfg = load(args.config, overrides)
        print(f"{cfg.name}: {describe(cfg.model)}", flush=True)
        best = train(cfg, args.data, args.out, args.resume, args.device, command=shlex.join(sys.argv))
    except (ConfigError, DataError, VGGWeightsMissing, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"best checkpoint: {best}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
