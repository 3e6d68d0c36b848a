"""The export's gates, checked from outside: an exported bundle agrees with PyTorch (measured here, not
read back from the manifest), a graph that does not is refused (exit 1, no bundle), and each stage's
halo is the smallest that keeps blockwise inference within the tolerance."""
import json

import numpy as np
import pytest

from conftest import real_he_40x
from tileserver.inference.halo import interior_error, smallest_halo


class Shifted:
    """A stage whose output is shifted by ``c``: what a wrong export would give."""

    def __new__(cls, stage, c: float):
        import torch

        class _Shifted(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = stage

            def forward(self, x):
                return self.inner(x) + c

        return _Shifted().eval()


def onnx_run(path):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: np.ascontiguousarray(x, np.float32)})[0]


def test_bundle_agrees_with_pytorch_within_1e4(bundle, checkpoint, he40):
    import torch

    from tileserver.inference import to_float
    from training.checkpoint import load_generator
    from training.data import scale_levels

    model, _ = load_generator(checkpoint)
    levels = scale_levels(he40)
    rng = np.random.default_rng(7)
    m = json.loads((bundle / "manifest.json").read_text())
    for k, (stage, spec) in enumerate(zip(model.stages, m["stages"])):
        run = onnx_run(bundle / spec["file"])
        real = to_float(np.ascontiguousarray(levels[k][:72, :88]))
        for x in (rng.random((2, 3, 29, 41), dtype=np.float32), real):
            with torch.no_grad():
                ref = stage(torch.from_numpy(x)).numpy()
            out = run(x)
            assert out.shape == ref.shape == (x.shape[0], 3, 2 * x.shape[2], 2 * x.shape[3])
            assert np.abs(out - ref).max() <= 1e-4, f"stage {k + 1}"


def test_parity_measures_the_largest_difference():
    import torch

    from training.export import parity

    class Session:  # ONNX Runtime's interface, answering the input plus a known error at one pixel
        def get_inputs(self):
            return [type("I", (), {"name": "input"})()]

        def run(self, _, feeds):
            y = feeds["input"].copy()
            y[0, 1, 2, 3] += 3e-3
            return [y]

    xs = [np.zeros((1, 3, 8, 8), np.float32), np.full((2, 3, 5, 7), 0.5, np.float32)]
    assert parity(torch.nn.Identity(), Session(), xs) == pytest.approx(3e-3, rel=1e-3)


def test_export_refuses_a_graph_that_differs_from_pytorch(checkpoint, tmp_path, monkeypatch, capsys):
    """ONNX output 2e-4 off PyTorch (twice the tolerance) at stage 1: exit 1, the reason, no bundle."""
    import export_onnx
    from training import export as ex

    real_export = ex.export_stage
    monkeypatch.setattr(ex, "export_stage", lambda stage, path, opset: real_export(Shifted(stage, 2e-4), path, opset))
    img = tmp_path / "he40.png"
    from PIL import Image

    Image.fromarray(real_he_40x()[0]).save(img)
    out = tmp_path / "bundle"
    assert export_onnx.main([str(checkpoint), "-o", str(out), "--image", str(img)]) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and "stage 1: ONNX differs from PyTorch" in err and err.count("\n") == 1
    assert not out.exists()  # no bundle folder at all: it is built beside and moved in only when complete


def test_an_evaluation_without_this_model_fails_before_any_file_is_written(checkpoint, tmp_path, capsys):
    """A wrong --evaluation must not leave an existing bundle with new graphs and its old manifest."""
    import json

    import export_onnx

    out = tmp_path / "bundle"
    out.mkdir()
    (out / "stage1.onnx").write_bytes(b"the shipped graph")
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"models": {"someone-else": {}}}))
    assert export_onnx.main([str(checkpoint), "-o", str(out), "--evaluation", str(summary)]) == 2  # bad input
    assert "no single evaluation" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["stage1.onnx"]
    assert (out / "stage1.onnx").read_bytes() == b"the shipped graph"
    assert export_onnx.main([str(checkpoint), "-o", str(out), "--evaluation", str(tmp_path / "absent.json")]) == 2
    assert "cannot read the evaluation" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["stage1.onnx"]


def test_check_stage_accepts_half_the_tolerance(checkpoint, tmp_path, he40):
    """The other side of the gate: 5e-5 off PyTorch is within 1e-4 and passes, and is measured as such."""
    from training import export as ex
    from training.checkpoint import load_generator
    from training.data import scale_levels

    model, _ = load_generator(checkpoint)
    path = tmp_path / "stage1.onnx"
    ex.export_stage(Shifted(model.stages[0], 5e-5), path, 18)
    diff, halo, errors = ex.check_stage(0, Shifted(model.stages[0], 0.0), path, scale_levels(he40)[0],
                                        np.random.default_rng(0), lambda *_: None)
    assert 4e-5 <= diff <= 6e-5 and halo >= 0 and errors


@pytest.mark.parametrize("errors,tol,expected", [
    ({0: 9.0, 2: 0.5, 4: 0.1, 6: 0.02, 8: 0.0}, 0.1, 4),  # equal to the tolerance passes
    ({0: 9.0, 2: 0.5, 4: 0.11, 6: 0.02, 8: 0.0}, 0.1, 6),
    ({0: 0.0, 2: 0.0}, 0.1, 0),
    ({0: 0.0, 2: 0.2, 4: 0.0}, 0.1, 4),  # every larger halo must pass too
    ({0: 1.0, 2: 1.0}, 0.1, None),
    ({8: 0.05, 2: 0.5, 4: 0.05, 6: 0.2}, 0.1, 8),  # order of the keys does not matter
])
def test_smallest_halo(errors, tol, expected):
    assert smallest_halo(errors, tol) == expected


def test_bundle_halos_are_the_smallest_that_meet_the_tolerance(bundle, he40):
    """Measured here on the image the export used: halo h is within the tolerance, h - 2 is not."""
    from tileserver.inference import to_float
    from training.data import scale_levels
    from training.export import centre_crop, halo_tolerance

    m = json.loads((bundle / "manifest.json").read_text())
    halos = m["halo_measurement"]["per_stage_halo"]
    assert m["halo"] == max(halos)
    levels = scale_levels(he40)
    for k, (h, spec) in enumerate(zip(halos, m["stages"])):
        run = onnx_run(bundle / spec["file"])
        x = to_float(centre_crop(levels[k], 160))[0]
        whole = run(x[None])[0]
        tol = halo_tolerance(k, len(halos))
        assert m["halo_measurement"]["tolerance_per_255"][k] == round(tol * 255, 4)
        assert interior_error(run, x, whole, h, 32, 32) <= tol, f"stage {k + 1}: halo {h} too small"
        if h >= 2:
            assert interior_error(run, x, whole, h - 2, 32, 32) > tol, f"stage {k + 1}: halo {h} not the smallest"


def test_halo_is_measured_at_every_window_phase():
    """A stage that averages its input over 4 × 4 cells fixed to the window's corner (as a
    back-projection to 5X subsamples on a fixed grid) matches whole-image inference only when
    the window starts on a multiple of 4: measured at every phase no halo passes (the export
    refuses it), measured on the grid of 4 the server cuts for such a stage, every halo does."""
    from tileserver.inference.halo import PHASES, measure_halo

    def cells(x):  # (N,3,H,W) -> (N,3,2H,2W): the mean of each 4x4 cell from the corner, enlarged 2x
        n, c, h, w = x.shape
        hh, ww = h - h % 4, w - w % 4
        m = x[:, :, :hh, :ww].reshape(n, c, hh // 4, 4, ww // 4, 4).mean(axis=(3, 5))
        out = np.repeat(np.repeat(m, 8, axis=2), 8, axis=3)
        return np.pad(out, ((0, 0), (0, 0), (0, 2 * h - out.shape[2]), (0, 2 * w - out.shape[3])), mode="edge")

    x = np.random.default_rng(0).random((3, 160, 160), dtype=np.float32)
    whole = cells(x[None])[0]
    assert PHASES >= 4
    assert interior_error(cells, x, whole, 4, 32, 32, align=4) == 0  # every window starts on a cell edge
    assert interior_error(cells, x, whole, 4, 32, 32) > 0.1
    assert interior_error(cells, x, whole, 6, 32, 32, align=4) > 0.1  # a halo off the cells' grid
    assert smallest_halo(measure_halo(cells, x), 1 / 255) is None
    # told that the server cuts its windows on multiples of 4, the measure finds halos (multiples of 4)
    errors = measure_halo(cells, x, align=4)
    assert sorted(errors) == list(range(0, 33, 4)) and smallest_halo(errors, 1 / 255) == 0
