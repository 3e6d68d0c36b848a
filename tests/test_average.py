"""training/average.py: the mean of one run's checkpoints, and a clear refusal for mixed architectures."""
import dataclasses

import torch

from training import checkpoint
from training.average import main
from training.model import GeneratorArgs, MultiScaleGenerator

SMALL = GeneratorArgs(features=8, growth=4, blocks=1, rdbs_per_block=2, dense_layers=2, init="kaiming",
                      bicubic_skip=True)


def saved(path, args: GeneratorArgs, seed: int, step: int) -> MultiScaleGenerator:
    torch.manual_seed(seed)
    model = MultiScaleGenerator(args)
    checkpoint.save(path, model, step=step, name="small", description="small test net")
    return model


def test_the_average_is_the_mean_of_every_weight(tmp_path):
    a = saved(tmp_path / "a.pt", SMALL, 0, 100)
    b = saved(tmp_path / "b.pt", SMALL, 1, 200)
    assert main([str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "-o", str(tmp_path / "mean.pt")]) == 0
    model, meta = checkpoint.load_generator(tmp_path / "mean.pt")
    wa, wb, wm = a.state_dict(), b.state_dict(), model.state_dict()
    assert any((wa[k] != wb[k]).any() for k in wa)
    for k in wm:
        assert torch.allclose(wm[k], (wa[k] + wb[k]) / 2, atol=1e-6), k
    assert meta["step"] == 200 and meta["averaged_steps"] == [100, 200] and meta["name"] == "small"
    assert "mean of the weights of 2 checkpoints" in meta["description"]


def test_checkpoints_of_other_widths_are_refused_with_exit_2(tmp_path, capsys):
    saved(tmp_path / "a.pt", SMALL, 0, 100)
    saved(tmp_path / "b.pt", dataclasses.replace(SMALL, features=6), 1, 100)
    assert main([str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "-o", str(tmp_path / "mean.pt")]) == 2
    assert "different architectures" in capsys.readouterr().err
    assert not (tmp_path / "mean.pt").exists()
    assert main([str(tmp_path / "missing.pt"), "-o", str(tmp_path / "mean.pt")]) == 2


def test_averages_can_be_averaged_again(tmp_path):
    """A mean of two fine-tunes' means (a model soup): the new lineage replaces the old one."""
    for name, seed, step in (("a", 0, 100), ("b", 1, 200), ("c", 2, 300)):
        saved(tmp_path / f"{name}.pt", SMALL, seed, step)
    assert main([str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "-o", str(tmp_path / "ab.pt")]) == 0
    assert main([str(tmp_path / "ab.pt"), str(tmp_path / "c.pt"), "-o", str(tmp_path / "soup.pt")]) == 0
    _, meta = checkpoint.load_generator(tmp_path / "soup.pt")
    assert meta["averaged_steps"] == [200, 300] and meta["averaged_from"] == [str(tmp_path / "ab.pt"), str(tmp_path / "c.pt")]
