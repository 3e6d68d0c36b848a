"""Evaluate models against bicubic on real 40X images, per lab.

For each image: 40X → 5X by the shared degradation (plus the JPEG round trip
the model was trained with), then 10X/20X/40X by each model (stage by stage,
rounded to uint8 between stages exactly as the server serves them) and by
bicubic interpolation of the same 5X input. Reported per lab, with the mean
over labs and the worst lab:
- PSNR (RGB and Y) and SSIM at each scale, model and bicubic, and the gain;
- band energy: the luma power of the 20X and 40X output in radial frequency
  bands divided by that of the real image (1 = all the real detail, 0 = none);
- consistency with the scan: the 40X output degraded back to 5X (no JPEG)
  against the 5X input, PSNR in dB;
- direction of the 40X detail: power in band [1/8, 1/4) in its strongest of 8
  orientations over the mean (real tissue about 1.1-1.5; streaks more);
- with two or more models, each one minus the first on the same images (PSNR
  RGB), per lab and over labs, with a 95 % interval: is a difference more than
  the images' spread?

    python training/evaluate.py [MODEL ...] [--sources training/configs/faithful.yaml] \\
        [--data ../shared/data] [--out DIR]

MODEL is a checkpoint (.pt) or a bundle folder (default: the shipped model).
Images: the validation split of the named sources of ``--sources`` (every lab,
held-out labs included), or ``--images`` under ``--data``, or else the
validation images recorded in the (first) checkpoint.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from tileserver.degrade import degrade
from tileserver.files import folder_problem, write_bytes_atomically
from training.data import DataError, load_rgb, scale_levels
from training.metrics import BANDS, SCALE_NAMES, band_power, bicubic_up, direction_bias, image_metrics, psnr
from training.report import paired_differences, save_crops_png, tables, write_csv
from training.upscale import Upscaler, device_name, load_upscaler, torch_device

BAND_SCALES = ["20X", "40X"]
MIN_SIDE = 32  # 40X px: cropped to a multiple of 8, its 10X level (a quarter) must hold SSIM's 7x7 window


class ImageError(ValueError):
    """An image a tool cannot use, told in one line that names it."""


def read_image(path: Path, min_side: int = MIN_SIDE, purpose: str = "to evaluate") -> np.ndarray:
    """``path`` as uint8 RGB, read whole; ``ImageError`` when it is missing, not a whole image (not one PIL
    knows, truncated, corrupt) or under ``min_side`` px a side, so a bad image is found before any work."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"no image at {path}")
    try:
        img = load_rgb(path)
    except DataError as e:  # names the file and why PIL could not read it
        raise ImageError(str(e)) from None
    if min(img.shape[:2]) < min_side:
        raise ImageError(f"{path} is {img.shape[1]}x{img.shape[0]} px: too small {purpose} "
                         f"(at least {min_side} px a side)")
    return img


def image_row(levels: list[np.ndarray], outs: list[np.ndarray]) -> dict[str, float]:
    """Metrics of one method's outputs [10X, 20X, 40X] against the real levels."""
    row: dict[str, float] = {}
    for i, name in enumerate(SCALE_NAMES):
        for k, v in image_metrics(outs[i], levels[i + 1]).items():
            row[f"{name}_{k}"] = v
        if name in BAND_SCALES:
            ratio = band_power(outs[i]) / np.maximum(band_power(levels[i + 1]), 1e-12)
            for b, r in enumerate(ratio):
                row[f"{name}_band{b}"] = float(r)
    row["consistency_psnr"] = psnr(degrade(outs[-1], 8), levels[0], 255.0)
    row["40X_direction"], row["40X_direction_real"] = direction_bias(outs[-1]), direction_bias(levels[-1])
    return row


def evaluate_image(img40: np.ndarray, upscale: Upscaler, jpeg_quality: int | None = None) -> tuple[dict, dict, dict]:
    """(model row, bicubic row, images) for one 40X image; images hold the 5X input and,
    per scale, (bicubic, model, real)."""
    levels = scale_levels(img40, jpeg_quality)  # 5X, 10X, 20X, 40X
    srs = upscale(levels[0])
    bics = [bicubic_up(levels[0], 2 ** (i + 1)) for i in range(3)]
    images = {"5X": levels[0], **{name: (bics[i], srs[i], levels[i + 1]) for i, name in enumerate(SCALE_NAMES)}}
    return image_row(levels, srs), image_row(levels, bics), images


def lab_means(rows: Sequence[dict]) -> dict[str, dict[str, float]]:
    """{lab: mean of every metric} over the rows of one method."""
    labs: dict[str, list[dict]] = {}
    for r in rows:
        labs.setdefault(r["lab"], []).append(r)
    return {lab: {"images": len(rs), **{k: float(np.mean([r[k] for r in rs])) for k in rs[0] if k not in ("lab", "image")}}
            for lab, rs in labs.items()}


def summarise(model_rows: Sequence[dict], bicubic_rows: Sequence[dict]) -> dict:
    """Per-lab means of model and bicubic, gains, the mean over labs and the worst lab per scale."""
    model, bic = lab_means(model_rows), lab_means(bicubic_rows)
    labs = sorted(model)
    gain = {lab: {k: model[lab][k] - bic[lab][k] for k in model[lab] if k != "images"} for lab in labs}
    over = lambda d: {k: float(np.mean([d[lab][k] for lab in labs])) for k in d[labs[0]] if k != "images"}
    worst = {s: min(labs, key=lambda lab: gain[lab][f"{s}_psnr_rgb"]) for s in SCALE_NAMES}
    return {"labs": labs, "model": model, "bicubic": bic, "gain": gain,
            "mean_over_labs": {"model": over(model), "bicubic": over(bic), "gain": over(gain)},
            "worst_lab": {s: {"lab": lab, "gain_psnr_rgb": gain[lab][f"{s}_psnr_rgb"]} for s, lab in worst.items()}}


def model_label(path: Path, name: str, ambiguous: bool) -> str:
    """The model's name, with its folder (a run or bundle) when two models share a name."""
    path = Path(path)
    return f"{name} ({path.name if path.is_dir() else path.parent.name + '/' + path.name})" if ambiguous else name


def load_models(models: Sequence[Path], device: str = "cpu") -> list[tuple[Upscaler, dict]]:
    """Every model's upscaler and info, loaded before any image is evaluated."""
    loaded = []
    for m in models:
        try:
            loaded.append(load_upscaler(m, device))
        except (KeyError, TypeError):  # a checkpoint without its training config, e.g. training/widen.py's init
            raise ValueError(f"{m} records no config.data.jpeg_quality (how its training inputs were "
                             "compressed): evaluate a trained checkpoint") from None
    return loaded


def evaluate(models: Sequence[Path], items: Sequence[tuple[str, Path]], out_dir: Path | None, progress: bool = True,
             device: str = "cpu", loaded: list[tuple[Upscaler, dict]] | None = None) -> dict:
    """Evaluate every model on the (lab, image) items; returns {"models": {name: summary}, ...}
    and, with ``out_dir``, writes per_image.csv, summary.json, tables.md and crops-<lab>.png (each atomically).
    ``device`` is where checkpoints run (bundles run on ONNX Runtime's CPU provider); ``loaded``: the
    models' ``load_models``, when the caller has them."""
    loaded = loaded or load_models(models, device)
    names = [model_label(m, info["name"], [i["name"] for _, i in loaded].count(info["name"]) > 1)
             for m, (_, info) in zip(models, loaded)]
    rows: dict[str, list[dict]] = {n: [] for n in names}
    bic_rows: dict[str, list[dict]] = {n: [] for n in names}
    samples: dict[str, dict] = {}
    for lab, path in tqdm(items, desc="evaluate", unit="image", disable=not progress):
        img40 = read_image(path)
        for name, (upscale, info) in zip(names, loaded):
            m, b, images = evaluate_image(img40, upscale, info["jpeg_quality"])
            rows[name].append({"lab": lab, "image": path.name, **m})
            bic_rows[name].append({"lab": lab, "image": path.name, **b})
            samples.setdefault(lab, {"image": path.name, "5X": images["5X"], "real": {}, "bicubic": {}, "models": {}})
            if samples[lab]["image"] == path.name:
                s = samples[lab]
                for scale in SCALE_NAMES:
                    s["bicubic"][scale], s["real"][scale] = images[scale][0], images[scale][2]
                    s["models"].setdefault(name, {})[scale] = images[scale][1]
    report = {"models": {n: {**summarise(rows[n], bic_rows[n]), "path": str(m), "input_jpeg_quality": info["jpeg_quality"]}
                         for n, m, (_, info) in zip(names, models, loaded)},
              "images": [{"lab": lab, "image": p.name} for lab, p in items], "bands_cycles_per_px": BANDS,
              "differences": {n: paired_differences(rows[names[0]], rows[n]) for n in names[1:]}}
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_csv(out_dir / "per_image.csv", [{"model": n, "method": meth, **r} for n in names
                                              for meth, rs in (("model", rows[n]), ("bicubic", bic_rows[n])) for r in rs])
        write_bytes_atomically(out_dir / "summary.json", json.dumps(report, indent=2).encode())
        write_bytes_atomically(out_dir / "tables.md", tables(report).encode())
        for lab, s in samples.items():
            save_crops_png(s, out_dir / f"crops-{lab}.png")
    return report


def recorded_items(model: Path, data_root: Path) -> list[tuple[str, Path]]:
    """The validation images (and labs) recorded in a checkpoint, found below ``data_root``."""
    from training.checkpoint import read_metadata

    ckpt = model / "checkpoint.pt" if model.is_dir() else model
    meta = read_metadata(ckpt) if ckpt.is_file() else {}
    names = meta.get("val_images") or []
    labs = meta.get("val_labs") or [data_root.name] * len(names)
    found = {p.name: p for p in data_root.rglob("*") if p.name in set(names)}
    return [(lab, found.get(n, data_root / n)) for lab, n in zip(labs, names)]


def source_items(config: Path, data_root: Path) -> list[tuple[str, Path]]:
    """The validation split of the named sources of a training config, every lab."""
    from training.config import ConfigError, load
    from training.data import SourceSpec, split_sources

    try:
        cfg = load(config)
    except ConfigError as e:
        raise ConfigError(str(e) if config.name in str(e) else f"{config}: {e}") from None
    if not cfg.data.sources:
        raise ValueError(f"{config} names no data sources")
    return split_sources([SourceSpec.from_dict(d) for d in cfg.data.sources], data_root)[1]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="*", type=Path, help="checkpoints .pt or bundle folders (default: the shipped model)")
    ap.add_argument("--data", type=Path, default=Path("../shared/data"), help="data root (or folder of --images)")
    ap.add_argument("--sources", type=Path, help="a training config whose named sources' validation split to use")
    ap.add_argument("--images", nargs="*", help="image file names in --data (one lab, named after the folder)")
    ap.add_argument("--out", type=Path, help="folder for per_image.csv, summary.json, tables.md, crops-<lab>.png")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="where checkpoints (.pt) run; auto = CUDA when PyTorch sees a GPU (bundles always run on the CPU)")
    return ap


def checked_inputs(args: argparse.Namespace, models: list[Path], device: str) -> tuple[list, list]:
    """(items, loaded models), every input checked before the evaluation runs: the images read whole and
    big enough, the models loaded, ``--out`` a folder that takes files. ``ValueError`` or
    ``BundleError`` (one line) when one is not usable."""
    if args.images:
        items = [(args.data.name, args.data / n) for n in args.images]
    elif args.sources:
        items = source_items(args.sources, args.data)
    else:
        items = recorded_items(models[0], args.data)
    absent = [str(p) for _, p in items if not p.is_file()]
    if not items or absent:
        raise ValueError(f"no evaluation images found (missing: {absent}); give --data and --sources or --images")
    for _, p in items:
        read_image(p)
    problem = folder_problem(args.out) if args.out else None
    if problem:
        raise ValueError(f"cannot write to --out {args.out}: {problem}")
    return items, load_models(models, device)


def main(argv: list[str] | None = None) -> int:
    from tileserver.inference import BundleError
    from training.checkpoint import DEFAULT_CHECKPOINT

    args = parser().parse_args(argv)
    models = args.models or [DEFAULT_CHECKPOINT]
    missing = [str(m) for m in models if not m.exists()]
    if missing:
        print(f"error: no model at {', '.join(missing)}", file=sys.stderr)
        return 2
    device = torch_device(args.device)
    if device is None:
        print("error: --device cuda, but PyTorch sees no CUDA GPU here", file=sys.stderr)
        return 2
    try:
        items, loaded = checked_inputs(args, models, device)
    except (OSError, ValueError, BundleError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if any(not m.is_dir() for m in models):
        print(f"checkpoints run on {device_name(device)}", file=sys.stderr)
    report = evaluate(models, items, args.out, device=device, loaded=loaded)
    print(tables(report))
    if args.out:
        print(f"wrote {args.out}/per_image.csv, summary.json, tables.md, crops-<lab>.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
