"""Train the multi-scale generator.

    python training/train.py --config training/configs/faithful.yaml \\
        --data ../shared/data --out runs/faithful [--set data.batch=8 ...] [--resume runs/faithful/last.pt]

Writes into --out: config.yaml (resolved), command.txt, log.csv, curves.png,
last.pt (resumable: weights, optimiser, step, RNG) and best.pt (best
validation PSNR-Y over the labs seen in training, averaged over scales).
Labs held out of training are validated and logged but never choose the checkpoint.
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
from training.curves import plot_curves
from training.data import BatchPrefetcher, BatchSampler, DataError, Dataset, SourceSpec, build_dataset, curriculum_threshold, load_rgb, scale_levels
from training.losses import GeneratorLoss, discriminator_loss
from tileserver.degrade import degrade
from tileserver.files import folder_problem, write_atomically
from training.metrics import SCALE_NAMES, band_power, bicubic_up, psnr, to_y
from training.model import MultiScaleGenerator, PatchDiscriminator, VGGFeatures, VGGWeightsMissing, describe
from training.upscale import device_name, torch_device, torch_upscaler


def to_tensors(batch: list[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    return [torch.from_numpy(b).to(device).permute(0, 3, 1, 2).float().div_(255) for b in batch]


def learning_rate(cfg: Config, step: int) -> float:
    epoch = step // cfg.run.steps_per_epoch
    return max(cfg.optim.min_lr, cfg.optim.lr * cfg.optim.decay ** (epoch // cfg.optim.decay_every_epochs))


def source_specs(cfg: Config, data_dir: Path) -> tuple[list[SourceSpec], Path]:
    """The named sources of ``cfg`` below ``data_dir``, or ``data_dir`` as one source."""
    if cfg.data.sources:
        specs = [SourceSpec.from_dict(d) for d in cfg.data.sources]
        unknown = set(cfg.data.train_only) - {s.name for s in specs}
        if unknown:
            raise DataError(f"data.train_only names unknown sources {sorted(unknown)}")
        if cfg.data.train_only:
            specs = [dataclasses.replace(s, train=s.name in cfg.data.train_only) for s in specs]
        return specs, data_dir
    data_dir = Path(data_dir)
    one = SourceSpec(name=data_dir.name, path=".", lab=data_dir.name, min_size=512,
                     val_patients=tuple(cfg.data.val_patients), val_count=0 if cfg.data.val_patients else cfg.data.val_count)
    return [one], data_dir


@dataclasses.dataclass
class ValidationSet:
    """Validation images as [5X, 10X, 20X, 40X] uint8 with their lab, optionally centre-cropped."""

    names: list[str]
    labs: list[str]
    levels: list[list[np.ndarray]]

    @classmethod
    def from_paths(cls, items: list[tuple[str, Path]], crop5: int | None, jpeg_quality: int | None = None) -> "ValidationSet":
        levels = []
        for _, p in items:
            img = load_rgb(p)
            if crop5:  # the centre, on the 8-px grid
                h, w = img.shape[:2]
                ch, cw = min(crop5 * 8, h - h % 8), min(crop5 * 8, w - w % 8)
                y0, x0 = ((h - ch) // 16) * 8, ((w - cw) // 16) * 8
                img = img[y0:y0 + ch, x0:x0 + cw]
            levels.append(scale_levels(img, jpeg_quality))
        return cls([p.name for _, p in items], [lab for lab, _ in items], levels)

    def psnr_y_by_lab(self, upscale, extras: dict | None = None) -> dict[str, np.ndarray]:
        """Mean PSNR-Y per scale (10X, 20X, 40X) for each lab; ``upscale`` maps 5X uint8 to the three
        outputs. With ``extras``, also fills the mean 40X band-energy ratios and consistency (dB)."""
        per_lab: dict[str, list[list[float]]] = {}
        bands, consistency = [], []
        for lab, lv in zip(self.labs, self.levels):
            outs = upscale(lv[0])
            per_lab.setdefault(lab, []).append([psnr(to_y(out), to_y(lv[i + 1])) for i, out in enumerate(outs)])
            if extras is not None:
                bands.append(band_power(outs[2]) / np.maximum(band_power(lv[3]), 1e-12))
                consistency.append(psnr(degrade(outs[2], 8), lv[0], 255.0))
        if extras is not None and bands:
            extras.update({f"val_40X_band{b}": float(v) for b, v in enumerate(np.mean(bands, axis=0))},
                          val_consistency=float(np.mean(consistency)))
        return {lab: np.mean(v, axis=0) for lab, v in per_lab.items()}

    def bicubic_psnr_y_by_lab(self) -> dict[str, np.ndarray]:
        return self.psnr_y_by_lab(lambda img5: [bicubic_up(img5, 2 ** (i + 1)) for i in range(3)])


LOG_FIELDS = ["step", "epoch", "lr", "loss", "l1", "mse", "ssim", "fft", "perceptual", "adversarial", "feature_match",
              "spectrum", "equivariance", "distill", "band_energy", "consistency", "d_loss", *[f"val_psnr_y_{s}" for s in SCALE_NAMES], "val_psnr_y_mean", *[f"val_40X_band{b}" for b in range(4)], "val_consistency", "threshold", "seconds"]


def trainable(model: MultiScaleGenerator, stages: list[int]) -> list[torch.nn.Parameter]:
    """Parameters of the 1-based ``stages`` (all when empty); the others are frozen."""
    unknown = set(stages) - set(range(1, len(model.stages) + 1))
    if unknown:
        raise ConfigError(f"optim.train_stages names stages {sorted(unknown)}; the model has {len(model.stages)}")
    params = []
    for k, stage in enumerate(model.stages, start=1):
        train = not stages or k in stages
        for p in stage.parameters():
            p.requires_grad_(train)
            if train:
                params.append(p)
    return params


class Trainer:
    """Model, optimisers, data and the running state of one training run."""

    def __init__(self, cfg: Config, data: Dataset, dev: torch.device):
        self.cfg, self.dev = cfg, dev
        self.data = data
        self.sampler = BatchSampler([s for s, _, _ in data.train], cfg.data.crop, cfg.data.batch, seed=cfg.run.seed,
                                    weights=[w for _, w, _ in data.train], augment=cfg.data.augment,
                                    jpeg_quality=cfg.data.jpeg_quality)
        self.val = ValidationSet.from_paths(data.val, cfg.data.val_crop, cfg.data.jpeg_quality)
        self.bicubic = self.val.bicubic_psnr_y_by_lab()
        self.model = MultiScaleGenerator(cfg.model).to(dev)
        self.opt = torch.optim.Adam(trainable(self.model, cfg.optim.train_stages), lr=cfg.optim.lr, betas=cfg.optim.betas)
        vgg = VGGFeatures(cfg.loss.vgg_weights).to(dev) if cfg.loss.perceptual else None
        self.disc = PatchDiscriminator(width=cfg.loss.disc_width).to(dev) if cfg.loss.adversarial or cfg.loss.feature_match else None
        self.d_opt = torch.optim.Adam(self.disc.parameters(), lr=cfg.optim.d_lr, betas=cfg.optim.d_betas) if self.disc else None
        if cfg.loss.distill and not (cfg.loss.teacher and Path(cfg.loss.teacher).is_file()):
            raise ConfigError(f"loss.distill needs loss.teacher, the checkpoint to copy (got {cfg.loss.teacher!r})")
        teacher = checkpoint.load_generator(Path(cfg.loss.teacher))[0].to(dev) if cfg.loss.distill else None
        self.loss_fn = GeneratorLoss(cfg.loss, vgg, self.disc, teacher)
        self.step, self.best = 0, -float("inf")
        self.prefetcher: BatchPrefetcher | None = None

    def threshold(self, step: int) -> float:
        """The flatness curriculum's threshold for the batch of ``step`` (0-based)."""
        d = self.cfg.data
        return curriculum_threshold(step // self.cfg.run.steps_per_epoch, d.curriculum_step, d.curriculum_every_epochs,
                                    d.curriculum_max) if d.curriculum else 0.0

    def start_prefetch(self) -> None:
        """With ``run.prefetch_batches``, make the next batches on a background thread from here on."""
        if self.cfg.run.prefetch_batches and self.prefetcher is None:
            self.prefetcher = BatchPrefetcher(self.sampler, self.threshold, self.step, self.cfg.run.prefetch_batches)

    def stop_prefetch(self) -> None:
        """Stop the thread; the sampler goes on from the last batch trained on, as if made in turn."""
        if self.prefetcher is not None:
            self.prefetcher.close()
            self.sampler.rng.bit_generator.state = self.prefetcher.state
            self.prefetcher = None

    def sampler_state(self) -> dict:
        """The sampler's RNG state after the last batch trained on (not after those made ahead)."""
        return self.prefetcher.state if self.prefetcher else self.sampler.rng.bit_generator.state

    def load_weights(self, path: Path, state: dict) -> None:
        """The generator weights of checkpoint ``state`` (of ``path``), or which model settings differ."""
        try:
            self.model.load_state_dict(state["model"])
        except (KeyError, RuntimeError):
            mine = dataclasses.asdict(self.model.args)
            theirs = {k: tuple(v) if isinstance(v, list) else v for k, v in (state.get("model_args") or {}).items()}
            differ = ", ".join(f"model.{k} {theirs[k]} there, {mine[k]} here" for k in mine if theirs.get(k, mine[k]) != mine[k])
            raise checkpoint.CheckpointError(f"{path} holds another network than the config's model ({differ or 'other weights'})") from None

    def init_from(self, path: Path) -> None:
        """Start from another run's generator weights (fine-tuning), not its optimiser or step."""
        self.load_weights(path, checkpoint.load(path))

    def resume(self, path: Path) -> None:
        """Continue the run of ``path`` (a last.pt): weights, optimisers, step, best score and RNG."""
        state = checkpoint.load(path)
        if state.get("optimizer") is None:
            raise checkpoint.CheckpointError(f"{path} holds no optimiser state (a best.pt or a released checkpoint has "
                                             "weights only): resume from the run's last.pt, or start from it with --init")
        if self.disc is not None and state.get("discriminator") is None:
            raise checkpoint.CheckpointError(f"{path} was trained without a discriminator, which loss.adversarial/"
                                             "loss.feature_match need: start from it with --init instead")
        self.load_weights(path, state)
        try:
            self.opt.load_state_dict(state["optimizer"])
            if self.disc is not None:
                self.disc.load_state_dict(state["discriminator"])
                self.d_opt.load_state_dict(state["d_optimizer"])
            self.step, self.best = state["step"], state["best_val"]
            self.sampler.rng.bit_generator.state = state["rng"]["sampler"]
            torch.set_rng_state(state["rng"]["torch"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise checkpoint.CheckpointError(f"{path} cannot be resumed with this config ({type(e).__name__}: {e})"
                                             .splitlines()[0][:300]) from None

    def train_step(self) -> dict[str, float]:
        """One D step (when there is a discriminator), then one G step on the batch of this step
        (made ahead by the prefetch thread or now; the same batch either way); returns the loss parts."""
        for g in self.opt.param_groups:
            g["lr"] = learning_rate(self.cfg, self.step)
        batch = self.prefetcher.next() if self.prefetcher else self.sampler.next(self.threshold(self.step))
        lr5, *targets = to_tensors(batch, self.dev)
        self.model.train()
        bf16 = self.cfg.run.precision == "bf16" or (self.cfg.run.precision == "auto" and self.dev.type == "cuda")
        with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=bf16):
            outputs = self.model(lr5)
            parts = {}
            if self.disc is not None:
                self.d_opt.zero_grad(set_to_none=True)
                d_loss = discriminator_loss(self.disc(targets[-1]), self.disc(outputs[-1].detach()))
                d_loss.backward()
                self.d_opt.step()
                parts["d_loss"] = d_loss.item()
            loss, g_parts = self.loss_fn([o.float() for o in outputs], targets, lr5, model=self.model)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.step += 1
        return {"loss": loss.item(), **g_parts, **parts}

    def validate(self, extras: dict) -> tuple[dict[str, np.ndarray], list[float]]:
        """PSNR-Y per lab and scale, and the per-scale mean over the labs seen in training;
        ``extras`` receives the 40X band-energy ratios and the consistency with the input."""
        self.model.eval()
        by_lab = self.val.psnr_y_by_lab(torch_upscaler(self.model), extras) if self.val.levels else {}
        seen = [by_lab[lab] for lab in self.data.seen_labs if lab in by_lab]
        return by_lab, list(np.mean(seen, axis=0)) if seen else [float("nan")] * 3

    def save(self, out_dir: Path, scores: list[float], meta: dict) -> None:
        """last.pt always; best.pt when the seen-lab PSNR-Y improves (or every time with
        ``run.select: last``, for models not chosen by PSNR such as the realistic one);
        with ``run.snapshots`` the weights of every step saved, for averaging (training/average.py)."""
        mean = float(np.mean(scores))
        if mean > self.best or self.cfg.run.select == "last" or not (out_dir / "best.pt").exists():
            self.best = max(self.best, mean)
            checkpoint.save(out_dir / "best.pt", self.model, step=self.step, best_val=self.best, val_psnr_y=scores, **meta)
        if self.cfg.run.snapshots:
            (out_dir / "snapshots").mkdir(exist_ok=True)
            checkpoint.save(out_dir / "snapshots" / f"step-{self.step}.pt", self.model, step=self.step, val_psnr_y=scores, **meta)
        checkpoint.save(out_dir / "last.pt", self.model, step=self.step, best_val=self.best, val_psnr_y=scores,
                        optimizer=self.opt.state_dict(), discriminator=self.disc.state_dict() if self.disc else None,
                        d_optimizer=self.d_opt.state_dict() if self.d_opt else None,
                        rng={"sampler": self.sampler_state(), "torch": torch.get_rng_state()}, **meta)


def log_fields(labs: list[str]) -> list[str]:
    return LOG_FIELDS + [f"val_gain_{lab}" for lab in labs]


def write_log_row(path: Path, fields: list[str], row: dict) -> None:
    """Append ``row``; a log written with other columns (a run resumed by newer code) is first
    rewritten, atomically, with ``fields`` and its old rows kept."""
    if path.exists():
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            old_rows = list(reader) if reader.fieldnames != fields else None
        if old_rows is not None:
            def rewrite(tmp: Path) -> None:
                with open(tmp, "w", newline="") as f:
                    w = csv.DictWriter(f, fields)
                    w.writeheader()
                    w.writerows({k: r.get(k, "") for k in fields} for r in old_rows)
            write_atomically(path, rewrite)
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fields)
        if new:
            w.writeheader()
        w.writerow({k: row.get(k, "") for k in fields})


def validate_and_save(t: Trainer, out_dir: Path, fields: list[str], labs: list[str], meta: dict, logged: dict) -> str:
    """Validate, append the log row (``logged``: step, losses, threshold, time), save the checkpoints
    and the curves; returns the line to print."""
    extras: dict[str, float] = {}
    by_lab, scores = t.validate(extras)
    row = {**extras, **logged, **{f"val_psnr_y_{s}": v for s, v in zip(SCALE_NAMES, scores)},
           "val_psnr_y_mean": float(np.mean(scores)),
           **{f"val_gain_{lab}": float(np.mean(by_lab[lab] - t.bicubic[lab])) for lab in labs}}
    write_log_row(out_dir / "log.csv", fields, row)
    t.save(out_dir, scores, meta)
    plot_curves(out_dir / "log.csv", out_dir / "curves.png", meta["bicubic_val_psnr_y"])
    return (f"step {t.step}: val PSNR-Y (seen labs) " + " ".join(f"{s} {v:.2f}" for s, v in zip(SCALE_NAMES, scores))
            + " | gain by lab " + " ".join(f"{lab} {row[f'val_gain_{lab}']:+.2f}" for lab in labs))


def prepare_run_folder(cfg: Config, out_dir: Path, command: str, resuming: bool) -> None:
    """Write config.yaml and command.txt (appended to when resuming); a new run drops an old log.csv.
    Called once every input is checked: a failed start leaves ``out_dir`` as it was."""
    problem = folder_problem(out_dir)
    if problem:
        raise ConfigError(f"cannot write the run folder {out_dir}: {problem}")
    config = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    write_atomically(out_dir / "config.yaml", lambda tmp: tmp.write_text(config))
    old = (out_dir / "command.txt").read_text() if resuming and (out_dir / "command.txt").is_file() else ""
    write_atomically(out_dir / "command.txt", lambda tmp: tmp.write_text(old + command + "\n"))
    if not resuming and (out_dir / "log.csv").exists():
        (out_dir / "log.csv").unlink()


def prepare_trainer(cfg: Config, data_dir: Path, dev: torch.device, resume: Path | None, init: Path | None) -> Trainer:
    """The trainer with its data read and its checkpoints loaded: every input checked, nothing written."""
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    torch.manual_seed(cfg.run.seed)
    t = Trainer(cfg, build_dataset(*source_specs(cfg, data_dir)), dev)
    if init:
        t.init_from(init)
    if resume:
        t.resume(resume)
    return t


def train(cfg: Config, data_dir: Path, out_dir: Path, resume: Path | None = None, device: str | None = None,
          command: str = "", progress: bool = True, init: Path | None = None) -> Path:
    """Train as ``cfg`` says; returns the path of the best checkpoint."""
    if torch_device(device) is None:
        raise ConfigError("--device cuda, but PyTorch sees no CUDA GPU here")
    dev = torch.device(torch_device(device))
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop sizes: let cuDNN time its kernels and keep the fastest
    if progress:
        print(f"training on {device_name(dev.type)}", flush=True)
    t = prepare_trainer(cfg, data_dir, dev, resume, init)
    data, out_dir = t.data, Path(out_dir)
    prepare_run_folder(cfg, out_dir, command, resume is not None)
    labs = sorted(t.bicubic)
    fields = log_fields(labs)
    meta = {"name": cfg.name, "config": to_dict(cfg), "val_images": t.val.names, "val_labs": t.val.labs,
            "train_images": [p.name for p in data.train_paths], "seen_labs": data.seen_labs,
            "bicubic_val_psnr_y": list(np.mean([t.bicubic[lab] for lab in data.seen_labs if lab in t.bicubic] or [[np.nan] * 3], axis=0)),
            "description": describe(cfg.model), "init": str(init) if init else None}
    total = cfg.run.epochs * cfg.run.steps_per_epoch
    bar = tqdm(total=total, initial=t.step, disable=not progress, desc=cfg.name, unit="step", dynamic_ncols=True)
    t.start_prefetch()
    start, sums, n = time.monotonic(), {}, 0
    try:
        while t.step < total:
            parts = t.train_step()
            n += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.update(1)
            bar.set_postfix(loss=f"{parts['loss']:.4f}", lr=f"{t.opt.param_groups[0]['lr']:.1e}")
            out_of_time = cfg.run.max_minutes is not None and time.monotonic() - start > 60 * cfg.run.max_minutes
            if t.step % cfg.run.steps_per_epoch == 0 or t.step == total or out_of_time:
                logged = {"step": t.step, "epoch": t.step / cfg.run.steps_per_epoch, "lr": t.opt.param_groups[0]["lr"],
                          **{k: v / n for k, v in sums.items()}, "threshold": t.threshold(t.step - 1),
                          "seconds": round(time.monotonic() - start, 1)}
                bar.write(validate_and_save(t, out_dir, fields, labs, meta, logged))
                sums, n = {}, 0
                if out_of_time:
                    bar.write(f"stopping: --max-minutes {cfg.run.max_minutes} reached at step {t.step}")
                    break
    finally:
        t.stop_prefetch()
        bar.close()
    return out_dir / "best.pt"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Train the multi-scale SR generator.")
    ap.add_argument("--config", type=Path, required=True, help="YAML config (training/configs/*.yaml; smoke.yaml for a quick try)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a setting, e.g. --set data.batch=8 (repeatable)")
    ap.add_argument("--data", type=Path, required=True,
                    help="data root of the config's named sources, or one folder of 40X tiles/slides")
    ap.add_argument("--out", type=Path, required=True, help="run folder")
    ap.add_argument("--resume", type=Path, help="last.pt of an earlier run: continue it")
    ap.add_argument("--init", type=Path, help="a checkpoint whose generator weights start this run (fine-tuning)")
    ap.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available")
    ap.add_argument("--max-minutes", type=float, help="stop cleanly after this wall time")
    ap.add_argument("--vgg-weights", help="path of torchvision's vgg19-dcbb9e9d.pth for the perceptual loss")
    args = ap.parse_args(argv)
    overrides = list(args.overrides)
    if args.max_minutes is not None:  # as the number, not text for YAML (which reads "1e-05" as a string)
        overrides.append(("run.max_minutes", args.max_minutes))
    if args.vgg_weights:
        overrides.append(("loss.vgg_weights", args.vgg_weights))
    try:
        cfg = load(args.config, overrides)
        print(f"{cfg.name}: {describe(cfg.model)}", flush=True)
        best = train(cfg, args.data, args.out, args.resume, args.device, command=shlex.join(sys.argv), init=args.init)
    except (ConfigError, DataError, checkpoint.CheckpointError, VGGWeightsMissing, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"best checkpoint: {best}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
