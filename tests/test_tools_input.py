"""Bad input to the model tools (export_onnx.py, training/evaluate.py, average.py, texture_strength.py,
widen.py, benchmarks/tiles.py and gpu.py): exit status 2, one line that names the file, no traceback,
inputs untouched, and an existing bundle never mixed with or lost to an export that fails or is stopped.
Fast: no graph is exported for real (the stage export is replaced where an export has to get that far)."""
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import export_onnx
from conftest import REPO, SHIPPED_LITE
from training import checkpoint as ckpt
from training import export as ex
from training.average import main as average
from training.evaluate import main as evaluate
from training.model import GeneratorArgs, MultiScaleGenerator
from training.texture_strength import main as strength
from training.widen import main as widen

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu  # noqa: E402
import tiles  # noqa: E402

SMALL = GeneratorArgs(features=4, growth=4, blocks=1, rdbs_per_block=1, dense_layers=1, bicubic_skip=True)
UNWRITABLE = Path("/sys/kernel")  # sysfs: no new files there, not even for root


def one_line_error(capsys, *words: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    for w in words:
        assert w in err, err
    return err


@pytest.fixture
def bad_checkpoints(tmp_path, checkpoint) -> list[Path]:
    """Files that are not checkpoints: text, random bytes, a truncated save, JSON, an ONNX graph's bytes."""
    files = {"notes.pt": b"not a checkpoint\n", "random.pt": np.random.default_rng(0).bytes(4096),
             "truncated.pt": checkpoint.read_bytes()[:5000], "config.json": b'{"model": 1}',
             "stage1.onnx": (SHIPPED_LITE / "stage1.onnx").read_bytes()[:20000]}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return [tmp_path / n for n in files]


@pytest.fixture
def small_ckpt(tmp_path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "small.pt"
    ckpt.save(path, MultiScaleGenerator(SMALL), step=3, name="small", config={"data": {"jpeg_quality": None}})
    return path


def image(path: Path, side: int) -> Path:
    Image.fromarray(np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
    return path


# -- export_onnx.py --

def fake_stages(written: list, stop_after: int | None = None):
    """export_stages without ONNX: writes stage files into the folder it is given (optionally SIGTERM after one)."""
    def run(model, img40, out, opset, log):
        stages = []
        for k in range(len(model.stages)):
            (out / f"stage{k + 1}.onnx").write_bytes(b"new graph")
            written.append(out)
            if stop_after == k + 1:
                os.kill(os.getpid(), signal.SIGTERM)
            stages.append({"file": f"stage{k + 1}.onnx", "sha256": "0" * 64, "scale": 2, "input": f"{5 * 2 ** k}X",
                           "output": f"{10 * 2 ** k}X", "parity": 0.0, "halo": 4, "errors": {}})
        return stages
    return run


@pytest.fixture
def old_bundle(tmp_path) -> Path:
    """A copy of a bundle's layout with an evaluation/ folder: what an export must not mix into."""
    out = tmp_path / "models" / "msr-lite"
    (out / "evaluation").mkdir(parents=True)
    for name in ("manifest.json", "stage1.onnx", "stage2.onnx", "stage3.onnx", "evaluation/tables.md"):
        (out / name).write_bytes(b"old " + name.encode())
    return out


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_export_refuses_a_non_empty_folder_without_force(checkpoint, old_bundle, tmp_path, capsys):
    before = snapshot(old_bundle)
    img = image(tmp_path / "he.png", ex.MIN_IMAGE_SIDE)
    assert export_onnx.main([str(checkpoint), "-o", str(old_bundle), "--image", str(img)]) == 2
    one_line_error(capsys, str(old_bundle), "not empty", "--force")
    assert snapshot(old_bundle) == before


def test_force_replaces_the_bundle_whole(checkpoint, old_bundle, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ex, "export_stages", fake_stages([]))
    img = image(tmp_path / "he.png", ex.MIN_IMAGE_SIDE)
    assert export_onnx.main([str(checkpoint), "-o", str(old_bundle), "--image", str(img), "--force"]) == 0
    assert sorted(p.name for p in old_bundle.iterdir()) == ["checkpoint.pt", "manifest.json", "stage1.onnx",
                                                             "stage2.onnx", "stage3.onnx"]  # no old evaluation/
    assert json.loads((old_bundle / "manifest.json").read_text())["onnx"]["opset"] == 18
    assert sorted(p.name for p in old_bundle.parent.iterdir()) == ["msr-lite"]  # no temporary folders left


def test_sigterm_during_an_export_leaves_the_old_bundle_as_it_was(checkpoint, old_bundle, tmp_path, monkeypatch,
                                                                  capsys):
    written: list = []
    monkeypatch.setattr(ex, "export_stages", fake_stages(written, stop_after=1))
    before = snapshot(old_bundle)
    img = image(tmp_path / "he.png", ex.MIN_IMAGE_SIDE)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert export_onnx.main([str(checkpoint), "-o", str(old_bundle), "--image", str(img), "--force"]) == 143
    finally:
        signal.signal(signal.SIGTERM, previous)
    one_line_error(capsys, "SIGTERM", "as it was")
    assert written and written[0] != old_bundle  # stage 1 went to a folder beside it
    assert snapshot(old_bundle) == before
    assert sorted(p.name for p in old_bundle.parent.iterdir()) == ["msr-lite"]


def test_a_new_bundle_folder_appears_only_when_complete(checkpoint, tmp_path, monkeypatch, capsys):
    def fail(model, img40, out, opset, log):
        (out / "stage1.onnx").write_bytes(b"half")
        raise ex.ExportError("stage 2: ONNX differs from PyTorch")

    monkeypatch.setattr(ex, "export_stages", fail)
    out = tmp_path / "new" / "bundle"
    img = image(tmp_path / "he.png", ex.MIN_IMAGE_SIDE)
    assert export_onnx.main([str(checkpoint), "-o", str(out), "--image", str(img)]) == 1
    one_line_error(capsys, "FAILED")
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("images, words", [
    (["missing.tif"], ["no image at", "missing.tif"]),
    (["notes.txt"], ["notes.txt", "not a readable image"]),
    (["small.png"], ["small.png", "too small", str(ex.MIN_IMAGE_SIDE)]),
    (["big.png", "missing.tif"], ["missing.tif"]),  # every image named must be there
])
def test_export_refuses_an_image_it_cannot_use(checkpoint, tmp_path, capsys, images, words):
    (tmp_path / "notes.txt").write_text("not an image")
    image(tmp_path / "small.png", 64)
    image(tmp_path / "big.png", ex.MIN_IMAGE_SIDE)
    args = [str(checkpoint), "-o", str(tmp_path / "out")] + [a for n in images for a in ("--image", str(tmp_path / n))]
    assert export_onnx.main(args) == 2
    one_line_error(capsys, *words)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("opset", ["3", "17", "27"])
def test_export_refuses_an_opset_it_cannot_write(checkpoint, tmp_path, capsys, opset):
    assert export_onnx.main([str(checkpoint), "-o", str(tmp_path / "out"), "--opset", opset]) == 2
    one_line_error(capsys, f"--opset {opset}", "18..26")
    assert not (tmp_path / "out").exists()


def test_export_records_the_opset_the_graphs_have(tmp_path, monkeypatch):
    """A graph left at another opset than asked (the exporter's fallback when a conversion fails) is refused."""
    import onnx
    from onnx import helper

    def export_at_18(stage, path, opset):
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                  [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))

    monkeypatch.setattr(ex, "export_stage", export_at_18)
    with pytest.raises(ex.ExportError, match="asked for opset 19, the graph has 18"):
        ex.export_stages(MultiScaleGenerator(SMALL), np.zeros((64, 64, 3), np.uint8), tmp_path, 19, print)


def test_export_refuses_files_that_are_not_checkpoints(bad_checkpoints, tmp_path, capsys):
    for path in bad_checkpoints:
        assert export_onnx.main([str(path), "-o", str(tmp_path / "out")]) == 2, path
        one_line_error(capsys, str(path), "not an MSR checkpoint")
    assert not (tmp_path / "out").exists()


def test_export_refuses_an_output_it_cannot_write(checkpoint, tmp_path, capsys):
    img = image(tmp_path / "he.png", ex.MIN_IMAGE_SIDE)
    (tmp_path / "a-file").write_text("mine")
    assert export_onnx.main([str(checkpoint), "-o", str(tmp_path / "a-file"), "--image", str(img)]) == 2
    one_line_error(capsys, "a-file", "is a file")
    assert (tmp_path / "a-file").read_text() == "mine"
    if UNWRITABLE.is_dir():
        assert export_onnx.main([str(checkpoint), "-o", str(UNWRITABLE / "x"), "--image", str(img)]) == 2
        one_line_error(capsys, str(UNWRITABLE))


def test_export_refuses_an_evaluation_that_is_not_a_summary(checkpoint, bad_checkpoints, tmp_path, capsys):
    for path in bad_checkpoints:  # random bytes, text, JSON of another shape
        assert export_onnx.main([str(checkpoint), "-o", str(tmp_path / "out"), "--evaluation", str(path)]) == 2
        one_line_error(capsys, str(path))
    assert not (tmp_path / "out").exists()


# -- training/evaluate.py --

def test_evaluate_refuses_files_that_are_not_checkpoints(bad_checkpoints, tmp_path, capsys):
    image(tmp_path / "a.png", 64)
    for path in bad_checkpoints:
        for extra in ([], ["--data", str(tmp_path), "--images", "a.png"]):
            assert evaluate([str(path), *extra]) == 2, path
            one_line_error(capsys, str(path))


def test_evaluate_refuses_a_broken_bundle(small_ckpt, tmp_path, capsys):
    image(tmp_path / "a.png", 64)
    images = ["--data", str(tmp_path), "--images", "a.png"]
    no_manifest = tmp_path / "no-manifest"
    no_manifest.mkdir()
    (no_manifest / "stage1.onnx").write_bytes(b"x")
    assert evaluate([str(no_manifest), *images]) == 2
    one_line_error(capsys, "no-manifest", "manifest.json is missing")
    no_stage = tmp_path / "no-stage"
    no_stage.mkdir()
    shutil.copy(SHIPPED_LITE / "manifest.json", no_stage)
    assert evaluate([str(no_stage), *images]) == 2
    one_line_error(capsys, "stage1.onnx", "missing")


@pytest.mark.parametrize("name, words", [("notes.txt", ["notes.txt", "not a readable image"]),
                                         ("cut.tif", ["cut.tif", "not a readable image"]),
                                         ("tiny8.png", ["tiny8.png", "8x8", "too small", "32"]),
                                         ("tiny4.png", ["tiny4.png", "4x4", "too small"])])
def test_evaluate_refuses_an_image_it_cannot_use(small_ckpt, tmp_path, capsys, name, words):
    (tmp_path / "notes.txt").write_text("not an image")
    import tifffile

    tifffile.imwrite(tmp_path / "whole.tif", np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8),
                     compression="zlib")
    (tmp_path / "cut.tif").write_bytes((tmp_path / "whole.tif").read_bytes()[:20000])
    image(tmp_path / "tiny8.png", 8)
    image(tmp_path / "tiny4.png", 4)
    assert evaluate([str(small_ckpt), "--data", str(tmp_path), "--images", name, "--device", "cpu"]) == 2
    one_line_error(capsys, *words)


def test_evaluate_refuses_sources_that_are_not_a_config(small_ckpt, tmp_path, capsys):
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    assert evaluate([str(small_ckpt), "--sources", str(tmp_path / "list.yaml"), "--data", str(tmp_path)]) == 2
    one_line_error(capsys, "list.yaml")


def test_evaluate_checks_out_before_evaluating(small_ckpt, tmp_path, monkeypatch, capsys):
    import training.evaluate as ev

    monkeypatch.setattr(ev, "evaluate", lambda *a, **k: pytest.fail("evaluated before --out was checked"))
    image(tmp_path / "a.png", 64)
    (tmp_path / "a-file").write_text("mine")
    outs = [tmp_path / "a-file"] + ([UNWRITABLE / "x"] if UNWRITABLE.is_dir() else [])
    for out in outs:
        assert evaluate([str(small_ckpt), "--data", str(tmp_path), "--images", "a.png", "--out", str(out)]) == 2
        one_line_error(capsys, str(out))
    assert (tmp_path / "a-file").read_text() == "mine"


def test_evaluate_writes_its_reports_atomically(small_ckpt, tmp_path, monkeypatch, capsys):
    import training.evaluate as ev

    atomic: list[str] = []
    real = ev.write_bytes_atomically
    monkeypatch.setattr(ev, "write_bytes_atomically", lambda path, data: (atomic.append(Path(path).name), real(path, data)))
    image(tmp_path / "a.png", 64)
    out = tmp_path / "report"
    assert evaluate([str(small_ckpt), "--data", str(tmp_path), "--images", "a.png", "--out", str(out),
                     "--device", "cpu"]) == 0
    assert atomic == ["summary.json", "tables.md"]
    assert json.loads((out / "summary.json").read_text())["models"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


# -- training/average.py, texture_strength.py, widen.py --

def checkpoint_tools(src: Path, out: Path) -> dict:
    return {"average": lambda: average([str(src), str(src), "-o", str(out)]),
            "texture_strength": lambda: strength([str(src), "--gain", "0.5", "-o", str(out)]),
            "widen": lambda: widen([f"--stage=0={src}", f"--stage=1={src}", f"--stage=2={src}", "--features", "4", "4", "4",
                                    "--growth", "4", "4", "4", "-o", str(out)])}


def test_checkpoint_tools_refuse_files_that_are_not_checkpoints(bad_checkpoints, tmp_path, capsys):
    for path in bad_checkpoints:
        for tool, run in checkpoint_tools(path, tmp_path / "out.pt").items():
            assert run() == 2, (tool, path)
            one_line_error(capsys, f"{tool}:", str(path))
    assert not (tmp_path / "out.pt").exists()


def test_checkpoint_tools_never_overwrite_an_input(small_ckpt, capsys):
    before = small_ckpt.read_bytes()
    link = small_ckpt.with_name("link.pt")
    link.symlink_to(small_ckpt.name)
    for out in (small_ckpt, link, small_ckpt.parent / "." / small_ckpt.name):
        for tool, run in checkpoint_tools(small_ckpt, out).items():
            assert run() == 2, (tool, out)
            one_line_error(capsys, "also an input")
    assert small_ckpt.read_bytes() == before


def test_checkpoint_tools_check_the_output_path(small_ckpt, tmp_path, capsys):
    for tool, run in checkpoint_tools(small_ckpt, tmp_path).items():  # a folder
        assert run() == 2
        one_line_error(capsys, "is a folder")
    if UNWRITABLE.is_dir():
        for tool, run in checkpoint_tools(small_ckpt, UNWRITABLE / "x.pt").items():
            assert run() == 2
            one_line_error(capsys, f"cannot write {UNWRITABLE / 'x.pt'}")
    for tool, run in checkpoint_tools(small_ckpt, tmp_path / "made" / "here.pt").items():  # the folder is made
        assert run() == 0, tool
        assert ckpt.load(tmp_path / "made" / "here.pt")["format"] == ckpt.FORMAT


def test_projection_must_be_a_count_of_steps(small_ckpt, tmp_path, capsys):
    with pytest.raises(ValueError, match="projection"):
        GeneratorArgs(projection=-1)
    src = str(small_ckpt)
    assert widen([f"--stage=0={src}", f"--stage=1={src}", f"--stage=2={src}", "--features", "4", "4", "4", "--growth", "4", "4", "4",
                  "--projection", "-1", "-o", str(tmp_path / "w.pt")]) == 2
    one_line_error(capsys, "widen:", "projection", ">= 0")
    assert not (tmp_path / "w.pt").exists()


# -- benchmarks --

@pytest.mark.parametrize("extra", [[], ["--chain"], ["--models", "a", "b"]])
def test_tiles_benchmark_checks_the_slide_folder_first(tmp_path, capsys, extra):
    assert tiles.main([str(tmp_path / "missing"), *extra]) == 2
    one_line_error(capsys, "missing", "does not exist")
    (tmp_path / "a-file").write_text("x")
    assert tiles.main([str(tmp_path / "a-file"), *extra]) == 2
    one_line_error(capsys, "a-file", "is not a folder")


@pytest.mark.parametrize("value", ["abc", "1920", "0x1080", "1920x-1", "x"])
def test_tiles_benchmark_refuses_a_bad_viewport(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as e:
        tiles.main([str(tmp_path), "--viewport", value])
    assert e.value.code == 2
    assert "--viewport" in capsys.readouterr().err
    assert tiles.viewport("1280X720") == "1280x720"


def test_gpu_benchmark_refuses_a_config_that_is_not_one(tmp_path, capsys):
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    assert gpu.main(["--device", "cpu", "--models", "--configs", str(tmp_path / "list.yaml")]) == 2
    one_line_error(capsys, "gpu:", "list.yaml")


@pytest.mark.parametrize("args", [["--batches", "0"], ["--batches", "1", "-2"], ["--seconds", "nan"],
                                  ["--seconds", "0"], ["--seconds", "inf"], ["--seconds", "-1"]])
def test_gpu_benchmark_refuses_non_positive_or_non_finite_numbers(capsys, args):
    with pytest.raises(SystemExit) as e:
        gpu.main(["--device", "cpu", "--models", *args])
    assert e.value.code == 2
    assert args[0] in capsys.readouterr().err
