"""Model bundles are checked at load: manifest fields, stage count, each graph's inputs, outputs,
opset and a test run; `tileserver serve` ends with exit 2 and one line naming the file."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from tileserver.files import sha256_file
from tileserver.inference import BundleError, Engine, load_bundle


def copy_bundle(bundle: Path, dest: Path) -> Path:
    shutil.copytree(bundle, dest)
    return dest


def edit_manifest(path: Path, change) -> None:
    mf = path / "manifest.json"
    m = json.loads(mf.read_text())
    change(m)
    mf.write_text(json.dumps(m))


def replace_stage(path: Path, index: int, data: bytes) -> Path:
    """Stage ``index``'s file replaced by ``data``, its sha256 updated (the hash check passes)."""
    m = json.loads((path / "manifest.json").read_text())
    f = path / m["stages"][index]["file"]
    f.write_bytes(data)
    edit_manifest(path, lambda m: m["stages"][index].update(sha256=sha256_file(f)))
    return f


def graph(channels_in: int = 3, opset: int = 17, op: str = "Identity") -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", channels_in, "h", "w"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", channels_in, "h", "w"])
    g = helper.make_graph([helper.make_node(op, ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model.SerializeToString()


def engine_error(path: Path) -> str:
    with pytest.raises(BundleError) as e:
        Engine(load_bundle(path), "cpu", 1)
    return str(e.value)


def test_garbage_graph_with_a_matching_hash(bundle, tmp_path):
    b = copy_bundle(bundle, tmp_path / "b")
    f = replace_stage(b, 0, b"not an onnx graph" * 10)
    message = engine_error(b)
    assert message.startswith(f"{f}: ONNX Runtime cannot load it") and "\n" not in message


@pytest.mark.parametrize("data,needle", [
    (graph(), "gave (1, 3,"),  # x1, not x2
    (graph(channels_in=1), "must be (N, 3, H, W)"),
    (graph(opset=9), "opset 9 is older than 11"),
])
def test_graphs_that_are_not_x2_rgb_stages(bundle, tmp_path, data, needle):
    b = copy_bundle(bundle, tmp_path / "b")
    f = replace_stage(b, 2, data)
    message = engine_error(b)
    assert message.startswith(f"{f}: ") and needle in message


@pytest.mark.parametrize("change,needle", [
    (lambda m: m.update(stages=5), "'stages' must list 3 x2 stages (5X to 10X, 20X, 40X), not 5"),
    (lambda m: m.update(stages=m["stages"][:2]), "not 2"),
    (lambda m: m["stages"][0].pop("sha256"), "stage 1 needs a 'file' and a 'sha256'"),
    (lambda m: m["stages"][1].update(file="../../etc/passwd"), "must lie inside the bundle"),
    (lambda m: m.update(input_mpp="two"), "'input_mpp' must be a positive number"),
    (lambda m: m.update(halo=-1), "'halo' must be a whole number"),
    (lambda m: m.pop("version"), "field 'version' is missing"),
    (lambda m: m["stages"][2].update(input_alignment=3), "stage 3: 'input_alignment' must be a power of two, not 3"),
])
def test_manifest_fields(bundle, tmp_path, change, needle):
    b = copy_bundle(bundle, tmp_path / "b")
    edit_manifest(b, change)
    with pytest.raises(BundleError) as e:
        load_bundle(b)
    assert str(e.value).startswith(f"{b / 'manifest.json'}: ") and needle in str(e.value)


def test_serve_with_a_broken_bundle_exits_2_with_one_line(bundle, slide_dir, tmp_path, capsys):
    from tileserver.commands import cli

    b = copy_bundle(bundle, tmp_path / "b")
    f = replace_stage(b, 0, b"garbage")
    assert cli.main(["serve", str(slide_dir), "--model", str(b), "--port", "0", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tileserver serve: error: {f}: ONNX Runtime cannot load it") and err.count("\n") == 1
    edit_manifest(b, lambda m: m.update(stages=5))
    assert cli.main(["serve", str(slide_dir), "--model", str(b), "--port", "0", "--device", "cpu"]) == 2
    assert capsys.readouterr().err == (f"tileserver serve: error: {b / 'manifest.json'}: 'stages' must list 3 x2 "
                                       "stages (5X to 10X, 20X, 40X), not 5\n")


def test_the_good_bundle_passes(bundle):
    assert Engine(load_bundle(bundle), "cpu", 1).stages == 3
    assert onnx.load(str(load_bundle(bundle).stage_files[0])).opset_import[0].version >= 11
