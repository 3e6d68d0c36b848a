"""Export a checkpoint to a model bundle: one ONNX graph per ×2 stage + manifest.json
(``python export_onnx.py CHECKPOINT -o BUNDLE_DIR`` runs ``main``).

Each stage is exported with dynamic batch, height and width, checked against
PyTorch on random and real inputs (max |ONNX − PyTorch| ≤ 1e-4 on [0, 1]
images; PixelShuffle must become DepthToSpace in CRD mode) and measured for the
halo it needs (blockwise vs whole-image inference). Any failure exits non-zero
and writes no manifest. The server needs only the bundle, not torch.
"""
from __future__ import annotations

import argparse
import datetime
import io
import logging
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PARITY_TOLERANCE = 1e-4
HALO_TOLERANCE = 0.1 / 255  # float error per stage; leaves room for uint8 rounding along the chain
BLOCK_SIZE = 128  # recommended block (input pixels per side, before the halo)
LICENCE = "CC BY-NC-SA 4.0 (MoNuSeg 2018 training images, Kumar et al.)"
MONUSEG_TILES = 30
TRAINING_DATA = f"MoNuSeg 2018 training set: {MONUSEG_TILES} H&E 1000x1000 40X tiles from TCGA diagnostic slides (Kumar et al., IEEE TMI 2017)"
INPUT_MPP = 2.0
TORCH_EXPORTER_LOG = "torch.onnx._internal.exporter._registration"  # says "torchvision is not installed" per op


class ExportError(RuntimeError):
    pass


def training_data(val_images: list[str]) -> str:
    """What the model was trained on, with the split: tiles for training and those held out for validation."""
    if not val_images:
        return TRAINING_DATA
    held = len(val_images)
    return f"{TRAINING_DATA}; {MONUSEG_TILES - held} for training, {held} held out for validation"


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


def centre_crop(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    y, x = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return img[y:y + size, x:x + size]


class _NoTorchvisionNotes(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "torchvision is not installed" not in record.getMessage()


def export_stage(stage, path: Path, opset: int) -> None:
    import torch

    x = torch.rand(1, 3, 48, 40)
    dims = {"x": {0: torch.export.Dim("N"), 2: torch.export.Dim("H"), 3: torch.export.Dim("W")}}
    quiet, logger = _NoTorchvisionNotes(), logging.getLogger(TORCH_EXPORTER_LOG)
    logger.addFilter(quiet)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                stage, (x,), str(path), dynamo=True, external_data=False, opset_version=opset, verbose=False,
                input_names=["input"], output_names=["output"], dynamic_shapes=dims,
            )
    finally:
        logger.removeFilter(quiet)


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


def check_stage(k: int, stage, path: Path, real: np.ndarray, rng: np.random.Generator, log) -> tuple[float, int, dict]:
    """Parity with PyTorch and the halo of one exported stage: (max diff, halo, error per halo /255)."""
    import onnxruntime as ort

    from tileserver.inference import session_options, to_float
    from tileserver.inference.halo import measure_halo, smallest_halo

    check_graph(path)
    sess = ort.InferenceSession(str(path), session_options(None), providers=["CPUExecutionProvider"])
    tests = [rng.random((2, 3, 37, 53), dtype=np.float32), rng.random((1, 3, 64, 64), dtype=np.float32),
             to_float(centre_crop(real, 128))]
    diff = parity(stage, sess, tests)
    log(f"stage {k + 1}: max |ONNX - PyTorch| = {diff:.3g} on random and real inputs")
    if not diff <= PARITY_TOLERANCE:
        raise ExportError(f"stage {k + 1}: ONNX differs from PyTorch by {diff:.3g} > {PARITY_TOLERANCE}")
    run = lambda x: sess.run(None, {sess.get_inputs()[0].name: np.ascontiguousarray(x, np.float32)})[0]  # noqa: E731
    errs = measure_halo(run, to_float(centre_crop(real, 160))[0])
    h = smallest_halo(errs, HALO_TOLERANCE)
    if h is None:
        raise ExportError(f"stage {k + 1}: no halo up to {max(errs)} px keeps blockwise inference within "
                          f"{HALO_TOLERANCE * 255:.2f}/255")
    log(f"stage {k + 1}: halo {h} px (interior error by halo: " + ", ".join(f"{a}:{e * 255:.3f}" for a, e in errs.items())
        + " /255)")
    return diff, h, {str(a): round(e * 255, 5) for a, e in errs.items()}


def export_stages(model, img40: np.ndarray, out: Path, opset: int, log) -> list[dict]:
    """stage{k}.onnx for every stage, each checked; on any failure the written graphs are removed."""
    from tileserver.files import sha256_file
    from training.data import scale_levels

    inputs = scale_levels(img40)  # [5X, 10X, 20X, 40X]: stage k reads level k
    rng = np.random.default_rng(0)
    written: list[Path] = []
    stages = []
    try:
        for k, stage in enumerate(model.stages):
            path = out / f"stage{k + 1}.onnx"
            export_stage(stage, path, opset)
            written.append(path)
            diff, halo, errors = check_stage(k, stage, path, inputs[k], rng, log)
            stages.append({"file": path.name, "sha256": sha256_file(path), "scale": 2, "input": f"{5 * 2 ** k}X",
                           "output": f"{10 * 2 ** k}X", "parity": diff, "halo": halo, "errors": errors})
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    return stages


def manifest_for(meta: dict, checkpoint: Path, stages: list[dict], img_source: str, opset: int, copy_checkpoint: bool,
                 name: str | None, version: str | None) -> dict:
    """The bundle's manifest.json (format msr-bundle/1), from the checkpoint's metadata and the checked stages."""
    import torch

    from tileserver.degrade import DESCRIPTION
    from tileserver.files import sha256_file
    from tileserver.inference import BUNDLE_FORMAT

    cfg = meta.get("config") or {}
    jpeg = (cfg.get("data") or {}).get("jpeg_quality")
    ckpt_sha = sha256_file(checkpoint)
    quality = {"metric": "PSNR-Y (dB) on whole validation images, model vs bicubic", "val_images": meta.get("val_images")}
    for key in ("val_psnr_y", "bicubic_val_psnr_y"):
        vals = meta.get(key)
        if isinstance(vals, (list, tuple)):
            quality[key] = {s["output"]: round(float(v), 4) for s, v in zip(stages, vals)}
    halos = [s["halo"] for s in stages]
    return {
        "format": BUNDLE_FORMAT,
        "name": name or meta.get("name") or checkpoint.stem,
        "version": version or f"{meta.get('step', 0)}-{ckpt_sha[:8]}",
        "description": meta.get("description"),
        "created": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        "config": cfg,
        "model_args": meta.get("model_args"),
        "stages": [{k: s[k] for k in ("file", "sha256", "scale", "input", "output")} for s in stages],
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
            "max_error_per_255_by_halo": {f"stage{k + 1}": s["errors"] for k, s in enumerate(stages)},
        },
        "parity": {"max_abs_diff": max(s["parity"] for s in stages), "tolerance": PARITY_TOLERANCE,
                   "image": Path(img_source).name},
        "training_data": training_data(meta.get("val_images") or []),
        "licence": LICENCE,
        "quality": quality,
        "checkpoint": {"file": "checkpoint.pt" if copy_checkpoint else None, "sha256_of_source": ckpt_sha},
        "onnx": {"opset": opset, "exporter": "torch.onnx.export(dynamo=True)", "torch": torch.__version__},
    }


def export(checkpoint: Path, out: Path, images: list[Path], opset: int = 18, copy_checkpoint: bool = True,
           name: str | None = None, version: str | None = None, log=print) -> dict:
    """Write the bundle for ``checkpoint`` into ``out`` and return its manifest; the manifest is written
    last (atomically), so a bundle without one is a failed export."""
    import json

    from tileserver.files import write_bytes_atomically
    from training.checkpoint import load_generator, strip_for_release

    checkpoint = Path(checkpoint)
    model, meta = load_generator(checkpoint)
    img40, img_source = real_image(images, meta.get("val_images") or [])
    out.mkdir(parents=True, exist_ok=True)
    stages = export_stages(model, img40, out, opset, log)
    manifest = manifest_for(meta, checkpoint, stages, img_source, opset, copy_checkpoint, name, version)
    if copy_checkpoint:
        strip_for_release(checkpoint, out / "checkpoint.pt")
    write_bytes_atomically(out / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="export_onnx.py", description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("-o", "--out", type=Path, required=True, help="bundle folder (created)")
    ap.add_argument("--image", type=Path, action="append", default=[], help="real 40X RGB image for the checks (repeatable)")
    ap.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
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
