"""Every bundle shipped in tileserver/models/ (one test set per manifest.json found there): its files match
the manifest's sha256, every stage loads and runs in ONNX Runtime, its recorded halos are the smallest
within its tolerance, a cold aligned 40X tile costs what the budget counts, and on one real H&E tile
(MoNuSeg TCGA-38-6178, from ../shared/data or the tiatoolbox wheel on PyPI) its whole-image output beats
bicubic at every scale."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

MODELS = Path(__file__).resolve().parents[1] / "tileserver" / "models"
BUNDLES = sorted(p.parent for p in MODELS.glob("*/manifest.json"))


def test_there_is_a_shipped_bundle():
    assert BUNDLES, f"no */manifest.json under {MODELS}"


@pytest.fixture(scope="module", params=BUNDLES, ids=[b.name for b in BUNDLES])
def shipped(request):
    return request.param


@pytest.fixture(scope="module")
def manifest(shipped) -> dict:
    return json.loads((shipped / "manifest.json").read_text())


def test_files_match_the_manifest(shipped, manifest):
    from tileserver.inference import load_bundle

    assert manifest["stages"], "no stages"
    for spec in manifest["stages"]:
        digest = hashlib.sha256((shipped / spec["file"]).read_bytes()).hexdigest()
        assert digest == spec["sha256"], spec["file"]
    b = load_bundle(shipped)  # the server's own check agrees
    assert b.stages == len(manifest["scales"]) == len(manifest["magnifications"]) - 1
    assert b.input_mpp > 0 and b.halo == max(b.stage_halo(k) for k in range(b.stages))


def test_every_stage_loads_and_runs(shipped, manifest):
    from tileserver.inference import Engine, load_bundle

    e = Engine(load_bundle(shipped), device="cpu", threads=1)
    try:
        x = np.random.default_rng(0).integers(0, 256, (1, 24, 40, 3), dtype=np.uint8)
        for k in range(len(manifest["stages"])):
            y = e.run(k, x)
            assert y.shape == (1, 48, 80, 3) and y.dtype == np.uint8 and y.std() > 0
        assert e.runs == [1] * len(manifest["stages"])
    finally:
        e.close()


def test_recorded_halos_are_the_smallest_within_tolerance(manifest):
    hm = manifest["halo_measurement"]
    tols = hm["tolerance_per_255"]  # one per stage (older bundles: one for all)
    for k, h in enumerate(hm["per_stage_halo"]):
        tol = tols[k] if isinstance(tols, list) else tols
        errors = {int(a): e for a, e in hm["max_error_per_255_by_halo"][f"stage{k + 1}"].items()}
        assert all(errors[a] <= tol for a in errors if a >= h), f"stage {k + 1}"
        smaller = [a for a in errors if a < h]
        assert not smaller or errors[max(smaller)] > tol, f"stage {k + 1}: halo {h} is not the smallest"


def test_cold_aligned_tile_costs_what_the_budget_counts(shipped, slide_dir):
    """docs/serving.md: a cold aligned 40X tile fits the default budget; counted = the model runs it causes."""
    from tileserver.settings import Settings
    from tileserver.web.app import create_app
    from tileserver.web.deepzoom import pyramid

    app = create_app(Settings(slide_dir=slide_dir, model=shipped, device="cpu", threads=1, cache_mb=64))
    svc = app.extensions["tileserver"]
    try:
        ref = svc.locate("he5x", "sr", svc.bundle.stages, 1, (254, 254, 254, 254), "png", ("probe",))
        counted = svc.missing_blocks(ref, 10**6)
        assert counted <= svc.settings.synthesis_budget
        top = pyramid(svc, "he5x").top
        assert app.test_client().get(f"/dzi/he5x_files/{top}/1_1.png").status_code == 200
        assert sum(svc.engine.runs) == counted and svc.engine.runs[-1] == 1
    finally:
        svc.close()


def test_beats_bicubic_on_a_real_tile_at_every_scale(shipped, manifest, he40):
    """Whole-image (not blockwise) output of the stage chain vs bicubic of the same 5X input (the shared
    degradation, with the JPEG round trip the model was trained with). Faithful models: PSNR on luma.
    Realistic ones (texture generated, not evidence): detail in the top two frequency bands nearer the
    real image's than bicubic's."""
    from training.data import scale_levels
    from training.metrics import band_power, bicubic_up, psnr, to_y
    from training.upscale import bundle_upscaler

    upscale, info = bundle_upscaler(shipped, threads=1)
    levels = scale_levels(he40, info["jpeg_quality"])
    outs = upscale(levels[0])
    realistic = manifest.get("kind") == "realistic"
    for i, (out, real) in enumerate(zip(outs, levels[1:])):
        bic = bicubic_up(levels[0], 2 ** (i + 1))
        assert out.shape == real.shape == bic.shape
        if realistic:
            power = band_power(real)[-2:]
            gap = lambda img: np.abs(np.log(band_power(img)[-2:] / power)).sum()  # noqa: E731
            assert gap(out) < gap(bic), f"{10 * 2 ** i}X: no more real detail than bicubic"
        else:
            model, base = psnr(to_y(out), to_y(real)), psnr(to_y(bic), to_y(real))
            assert model > base, f"{10 * 2 ** i}X: PSNR-Y {model:.2f} dB <= bicubic {base:.2f} dB"
