"""Evaluate a checkpoint (or an exported bundle) against bicubic on real 40X images.

For each image: 40X → 5X by the shared degradation, then 10X/20X/40X by the
model (stage by stage, rounded to uint8 between stages exactly as the server
serves them) and by bicubic interpolation of the 5X image; PSNR (RGB and Y)
and SSIM (scikit-image) of both against the real pixels at each scale.

    python training/evaluate.py [CHECKPOINT|BUNDLE] --data DIR [--images A.tif ...] --out DIR
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from training.data import load_rgb, scale_levels
from training.metrics import SCALE_NAMES, bicubic_up, image_metrics
from training.upscale import Upscaler, load_upscaler

def evaluate_image(img40: np.ndarray, upscale: Upscaler, jpeg_quality: int | None = None) -> tuple[dict, dict]:
    """(metrics, images) for one 40X image; images hold 5X input, bicubic, SR and real per scale.
    The 5X input gets the JPEG round trip the model was trained with, if any."""
    levels = scale_levels(img40, jpeg_quality)  # 5X, 10X, 20X, 40X
    srs = upscale(levels[0])
    metrics, images = {}, {"5X": levels[0]}
    for i, name in enumerate(SCALE_NAMES):
        real, sr, bic = levels[i + 1], srs[i], bicubic_up(levels[0], 2 ** (i + 1))
        for method, pred in (("sr", sr), ("bicubic", bic)):
            for k, v in image_metrics(pred, real).items():
                metrics[f"{name}_{method}_{k}"] = v
        images[name] = (bic, sr, real)
    return metrics, images


def summarise(rows: Sequence[dict]) -> dict:
    keys = [k for k in rows[0] if k != "image"]
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    summary = {"images": len(rows), "mean": mean, "gain": {}}
    for name in SCALE_NAMES:
        summary["gain"][name] = {
            m: mean[f"{name}_sr_{m}"] - mean[f"{name}_bicubic_{m}"] for m in ("psnr_rgb", "psnr_y", "ssim")
        }
    return summary


def format_table(summary: dict) -> str:
    m = summary["mean"]
    lines = [
        f"{'scale':<6}{'bicubic PSNR':>14}{'SR PSNR':>10}{'gain':>8}{'bicubic PSNR-Y':>16}{'SR PSNR-Y':>11}{'gain':>8}"
        f"{'bicubic SSIM':>14}{'SR SSIM':>9}{'gain':>8}"
    ]
    for s in SCALE_NAMES:
        g = summary["gain"][s]
        lines.append(
            f"{s:<6}{m[f'{s}_bicubic_psnr_rgb']:>14.2f}{m[f'{s}_sr_psnr_rgb']:>10.2f}{g['psnr_rgb']:>+8.2f}"
            f"{m[f'{s}_bicubic_psnr_y']:>16.2f}{m[f'{s}_sr_psnr_y']:>11.2f}{g['psnr_y']:>+8.2f}"
            f"{m[f'{s}_bicubic_ssim']:>14.4f}{m[f'{s}_sr_ssim']:>9.4f}{g['ssim']:>+8.4f}"
        )
    return "\n".join(lines) + f"\n(mean over {summary['images']} images, whole images, PSNR in dB)"


def save_crops_png(samples: list[tuple[str, dict]], path: Path, crop40: int = 256) -> None:
    """One row per image and scale: 5X input (nearest-neighbour enlarged) | bicubic | SR | real."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(n, s, imgs) for n, imgs in samples for s in SCALE_NAMES]
    fig, axes = plt.subplots(len(rows), 4, figsize=(12, 3 * len(rows)), squeeze=False)
    for r, (name, scale, imgs) in enumerate(rows):
        f = 2 ** (SCALE_NAMES.index(scale) + 1)
        bic, sr, real = imgs[scale]
        c = crop40 // (8 // f)  # same field of view at every scale
        y0, x0 = (real.shape[0] - c) // 2, (real.shape[1] - c) // 2
        lr = imgs["5X"][y0 // f:(y0 + c) // f, x0 // f:(x0 + c) // f]
        panels = [np.kron(lr, np.ones((f, f, 1), dtype=np.uint8)), bic[y0:y0 + c, x0:x0 + c], sr[y0:y0 + c, x0:x0 + c], real[y0:y0 + c, x0:x0 + c]]
        for col, (panel, title) in enumerate(zip(panels, ("5X input", "bicubic", "SR (model)", f"real {scale}"))):
            ax = axes[r][col]
            ax.imshow(panel, interpolation="nearest")
            ax.set_title(f"{name[:16]} {scale}: {title}" if col == 0 else title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(path)


def evaluate(model_path: Path, images: Sequence[Path], out_dir: Path | None, n_png: int = 2) -> dict:
    upscale, info = load_upscaler(model_path)
    rows, samples = [], []
    for p in images:
        metrics, imgs = evaluate_image(load_rgb(p), upscale, info["jpeg_quality"])
        rows.append({"image": p.name, **metrics})
        if len(samples) < n_png:
            samples.append((p.name, imgs))
    summary = summarise(rows)
    summary["model"] = info["name"]
    summary["input_jpeg_quality"] = info["jpeg_quality"]
    summary["model_path"] = str(model_path)
    summary["image_names"] = [p.name for p in images]
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "per_image.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        save_crops_png(samples, out_dir / "crops.png")
    return summary


def validation_images(checkpoint_path: Path, data_dir: Path) -> list[Path]:
    """The validation images recorded in a checkpoint's metadata, found in ``data_dir``."""
    from training.checkpoint import read_metadata

    names = read_metadata(checkpoint_path).get("val_images") or []
    return [data_dir / n for n in names if (data_dir / n).exists()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", nargs="?", type=Path, help="checkpoint .pt or bundle directory (default: the shipped model)")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/monuseg2018-train"))
    ap.add_argument("--images", nargs="*", help="image file names in --data (default: the checkpoint's validation images)")
    ap.add_argument("--out", type=Path, help="folder for per_image.csv, summary.json and crops.png")
    args = ap.parse_args(argv)
    from training.checkpoint import DEFAULT_CHECKPOINT

    model = args.model or DEFAULT_CHECKPOINT
    if not model.exists():
        print(f"error: no model at {model}", file=sys.stderr)
        return 2
    if args.images:
        images = [args.data / n for n in args.images]
    else:  # the validation images recorded in the checkpoint (a bundle carries its checkpoint.pt)
        ckpt = model / "checkpoint.pt" if model.is_dir() else model
        images = validation_images(ckpt, args.data) if ckpt.is_file() else []
    missing = [p for p in images if not p.exists()]
    if not images or missing:
        print(f"error: no evaluation images found (missing: {[str(p) for p in missing]}; give --data and --images)", file=sys.stderr)
        return 2
    summary = evaluate(model, images, args.out)
    print(format_table(summary))
    if args.out:
        print(f"wrote {args.out}/per_image.csv, summary.json, crops.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
