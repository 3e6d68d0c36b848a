"""export_onnx.py → bundle → engine: parity, manifest, hashes, providers."""
import json
import shutil

import numpy as np
import pytest

import tileserver.inference as eng


def test_manifest_fields(bundle):
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["format"] == eng.BUNDLE_FORMAT
    assert m["name"] == "tiny" and m["version"].startswith("1-")
    assert [s["file"] for s in m["stages"]] == ["stage1.onnx", "stage2.onnx", "stage3.onnx"]
    assert all(len(s["sha256"]) == 64 for s in m["stages"])
    assert m["scales"] == [2, 2, 2] and m["magnifications"] == ["5X", "10X", "20X", "40X"]
    assert m["input_mpp"] == 2.0
    assert m["degradation"].startswith("bicubic x1/2 cascade")
    assert m["licence"].startswith("CC BY-NC-SA 4.0") and m["licence_url"].endswith("/by-nc-sa/4.0/")
    assert m["kind"] == "faithful" and "MoNuSeg" in m["training_data"]
    assert m["quality"]["val_psnr_y"] == {"10X": 30.0, "20X": 28.0, "40X": 26.0}
    assert m["parity"]["max_abs_diff"] <= 1e-4
    assert 0 < m["halo"] <= 32 and m["halo"] == max(m["halo_measurement"]["per_stage_halo"])
    assert m["block_size"] > 0
    assert (bundle / "checkpoint.pt").is_file()


def test_bundle_matches_torch_chain(bundle, checkpoint, he5):
    """The exported chain equals the PyTorch chain (uint8 between stages) up to rounding."""
    from training.checkpoint import load_generator
    from training.upscale import bundle_upscaler, torch_upscaler

    onnx_up, info = bundle_upscaler(bundle)
    assert info == {"name": "tiny", "jpeg_quality": None}
    model, _ = load_generator(checkpoint)
    img = np.ascontiguousarray(he5[:48, :40])
    for a, b in zip(onnx_up(img), torch_upscaler(model)(img)):
        assert a.dtype == np.uint8 and a.shape == b.shape
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_refuses_tampered_bundle(bundle, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    with open(bad / "stage2.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(eng.BundleError, match="sha256"):
        eng.load_bundle(bad)


def test_missing_bundle_is_a_clear_error(tmp_path):
    with pytest.raises(eng.BundleError, match="manifest.json is missing"):
        eng.load_bundle(tmp_path / "nothing")


def test_cpu_fallback_is_reported(bundle):
    e = eng.Engine(eng.load_bundle(bundle), device="auto", threads=1)
    try:
        assert e.provider in ("CPUExecutionProvider", "CUDAExecutionProvider")
        assert e.sessions[0].get_providers()[0] == e.provider
        if e.provider == "CPUExecutionProvider":
            assert e.note and "CPU" in e.note
    finally:
        e.close()


def test_cpu_session_options(bundle):
    so = eng.session_options(2)
    assert so.intra_op_num_threads == 2
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.get_session_config_entry("session.inter_op.allow_spinning") == "0"


def test_engine_runs_any_block_shape(bundle):
    e = eng.Engine(eng.load_bundle(bundle), device="cpu", threads=1)
    try:
        out = e.run(1, np.zeros((2, 17, 23, 3), np.uint8))
        assert out.shape == (2, 34, 46, 3) and out.dtype == np.uint8
        assert e.runs == [0, 2, 0]
    finally:
        e.close()


def test_export_cli_fails_loudly_without_checkpoint(tmp_path, capsys):
    import export_onnx

    assert export_onnx.main([str(tmp_path / "none.pt"), "-o", str(tmp_path / "b")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_batched_blocks_equal_single_runs(bundle):
    """Blocks of one stage waiting together run as one batch, with the same pixels."""
    import threading

    e = eng.Engine(eng.load_bundle(bundle), device="cpu", threads=1, max_batch=4)
    try:
        rng = np.random.default_rng(1)
        blocks = [rng.integers(0, 256, (1, 20, 20, 3), dtype=np.uint8) for _ in range(6)]
        single = [e.run(2, b) for b in blocks]
        gate = threading.Event()
        e.queue.submit(None, lambda: gate.wait(10))  # hold the worker so the six queue up
        futs = [e.queue.submit((e, 2, (3, 20, 20)), eng.to_float(b)) for b in blocks]
        batches = e.queue.batches
        gate.set()
        out = [f.result(10) for f in futs]
        assert e.queue.batches - batches == 1 + 2  # the gate, then 4 + 2 blocks
        for a, b in zip(out, single):
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    finally:
        e.close()


def test_fallback_reported_by_the_api(bundle, slide_dir):
    from tileserver.settings import Settings
    from tileserver.web.app import create_app

    app = create_app(Settings(slide_dir=slide_dir, model=bundle, device="auto"))
    try:
        h = app.test_client().get("/healthz").json
        m = app.test_client().get("/api/slides").json["model"]
        assert h["provider"] == m["provider"] == app.extensions["tileserver"].engine.sessions[0].get_providers()[0]
        if h["provider"] == "CPUExecutionProvider":
            assert "CPU" in h["provider_note"] and m["provider_note"] == h["provider_note"]
        assert f'provider="{h["provider"]}"' in app.test_client().get("/metrics").data.decode()
    finally:
        app.extensions["tileserver"].close()


def test_manifest_describes_named_sources_kind_losses_and_per_lab_quality(tmp_path):
    from training import checkpoint
    from training.export import ExportError, losses_of, quality_from, training_data
    from training.model import GeneratorArgs, MultiScaleGenerator

    sources = [{"name": "radboud", "path": "camelyon16-patches/radboud", "lab": "radboud", "val_patients": ["tumor_064"]},
               {"name": "utrecht", "path": "camelyon16-patches/utrecht", "lab": "utrecht", "held_out": True}]
    meta = {"config": {"data": {"sources": sources}}, "train_images": ["a.png", "b.png"],
            "val_labs": ["radboud", "utrecht", "utrecht"]}
    d = training_data(meta)
    assert d["licence"]["name"] == "CC0 1.0"  # CAMELYON only: no share-alike inherited
    assert [(r["lab"], r["validation_images"]) for r in d["sources"]] == [("radboud", 1), ("utrecht", 2)]
    assert "held out" in d["sources"][1]["role"]
    assert d["summary"] == "2 training images from radboud; held-out labs: utrecht"
    sources.append({"name": "monuseg", "path": "monuseg2018-train"})
    assert training_data(meta)["licence"]["name"].startswith("CC BY-NC-SA 4.0")
    assert losses_of({"loss": {"l1": 0.06, "adversarial": 0.0, "consistency": 0.5, "vgg_weights": None}}) == \
        {"l1": 0.06, "consistency": 0.5}
    assert losses_of({"loss": {"l1": 0.06, "disc_width": 64}}) == {"l1": 0.06}  # no discriminator without its terms
    assert losses_of({"loss": {"l1": 0.06, "adversarial": 0.005, "disc_width": 16}}) == \
        {"l1": 0.06, "adversarial": 0.005, "discriminator_width": 16}
    teacher = tmp_path / "teacher.pt"  # a distilled model names its teacher and the losses the teacher learnt from
    checkpoint.save(teacher, MultiScaleGenerator(GeneratorArgs(features=4, growth=2, blocks=1, rdbs_per_block=1,
                    dense_layers=1)), step=1, config={"loss": {"l1": 0.06, "adversarial": 0.005, "disc_width": 16}})
    assert losses_of({"loss": {"l1": 0.0, "distill": 1.0, "teacher": str(teacher)}}) == \
        {"distill": 1.0, "teacher": str(teacher),
         "teacher_losses": {"l1": 0.06, "adversarial": 0.005, "discriminator_width": 16}}
    report = {"models": {"m (a/last.pt)": {k: {} for k in ("labs", "model", "bicubic", "gain", "mean_over_labs", "worst_lab")},
                         "other": {}}, "bands_cycles_per_px": [[0.25, 0.5]]}
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(report))
    assert quality_from(path, "m")["bands_cycles_per_px"] == [[0.25, 0.5]]
    with pytest.raises(ExportError, match="no single evaluation"):
        quality_from(path, "absent")
