"""training/widen.py: a wider generator starts computing exactly what the trained stages computed."""
import dataclasses

import pytest
import torch

from training import checkpoint
from training.model import GeneratorArgs, MultiScaleGenerator
from training.widen import compose, main

SMALL = GeneratorArgs(features=8, growth=4, blocks=1, rdbs_per_block=2, dense_layers=2, init="kaiming",
                      bicubic_skip=True)


def saved(tmp_path, args: GeneratorArgs, name: str, seed: int) -> tuple[MultiScaleGenerator, dict]:
    torch.manual_seed(seed)
    model = MultiScaleGenerator(args)
    for p in model.parameters():  # trained-looking weights: the bicubic-skip init leaves tails near zero
        p.data.add_(0.05 * torch.randn_like(p))
    checkpoint.save(tmp_path / name, model, step=1)
    return model.eval(), checkpoint.load(tmp_path / name)


def test_widened_and_grafted_stages_compute_what_their_sources_did(tmp_path):
    a, state_a = saved(tmp_path, SMALL, "a.pt", 0)
    b, state_b = saved(tmp_path, dataclasses.replace(SMALL, features=6, growth=3), "b.pt", 1)
    new = dataclasses.replace(SMALL, features=(16, 16, 6), growth=(8, 6, 3))
    model = compose([(state_a, 0), (state_a, 1), (state_b, 2)], new).eval()
    assert model.stages[0].body[0].rdbs[0].layers[1][0].weight.shape == (8, 16 + 8, 3, 3)
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        ours, first = model(x), a(x)
        assert (ours[0] - first[0]).abs().max() < 1e-5
        assert (ours[1] - first[1]).abs().max() < 1e-5
        assert (ours[2] - b.stages[2](first[1])).abs().max() < 1e-5


def test_the_new_channels_learn(tmp_path):
    _, state = saved(tmp_path, SMALL, "a.pt", 0)
    model = compose([(state, k) for k in range(3)], dataclasses.replace(SMALL, features=16, growth=8))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.rand(2, 3, 12, 12)
    rdb = model.stages[1].body[0].rdbs[0]
    before = rdb.layers[1][0].weight.detach().clone()
    for _ in range(2):  # step 1 moves the readers of new growth channels, step 2 also their producers
        opt.zero_grad()
        sum(o.square().mean() for o in model(x)).backward()
        opt.step()
    moved = (rdb.layers[1][0].weight.detach() - before).abs()
    assert moved[:, 16 + 4:16 + 8].sum() > 0, "the weights reading a new growth channel never moved"
    assert model.stages[1].head.weight.grad[8:].abs().sum() > 0, "a new trunk channel gets no gradient"


def test_narrowing_keeps_the_channels_that_carry_the_most(tmp_path):
    """Widen, then cut back to the old widths: the added channels carry nothing, so exactly the old
    network comes back; a depth change is refused."""
    small, state = saved(tmp_path, SMALL, "a.pt", 0)
    wide = compose([(state, k) for k in range(3)], dataclasses.replace(SMALL, features=16, growth=8))
    checkpoint.save(tmp_path / "wide.pt", wide, step=1)
    back = compose([(checkpoint.load(tmp_path / "wide.pt"), k) for k in range(3)], SMALL).eval()
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        assert all((p - q).abs().max() < 1e-5 for p, q in zip(back(x), small(x)))
    cut = compose([(state, k) for k in range(3)], dataclasses.replace(SMALL, features=6, growth=3))
    assert cut.stages[2].body[0].rdbs[1].fusion.weight.shape == (6, 6 + 2 * 3, 3, 3)
    with pytest.raises(ValueError, match="depth"):
        compose([(state, k) for k in range(3)], dataclasses.replace(SMALL, dense_layers=3))


def test_cli_writes_a_checkpoint_or_exits_2(tmp_path, capsys):
    saved(tmp_path, SMALL, "a.pt", 0)
    src = str(tmp_path / "a.pt")
    out = tmp_path / "wide.pt"
    assert main(["--stage", f"0={src}", "--stage", f"1={src}", "--stage", f"2={src}:2",
                 "--features", "16", "16", "8", "--growth", "8", "8", "4", "-o", str(out)]) == 0
    assert checkpoint.load(out)["model_args"]["features"] == (16, 16, 8)
    assert main(["--stage", f"0={tmp_path / 'missing.pt'}", "--features", "8", "--growth", "4", "-o", str(out)]) == 2
    assert main(["--stage", f"1={src}", "--features", "8", "--growth", "4", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "widen:" in err and "Traceback" not in err


def test_stages_gain_the_back_projection_and_keep_their_weights(tmp_path):
    a, _ = saved(tmp_path, SMALL, "a.pt", 0)
    src, out = str(tmp_path / "a.pt"), tmp_path / "projected.pt"
    assert main(["--stage", f"0={src}", "--stage", f"1={src}", "--stage", f"2={src}", "--features", "8", "8", "8",
                 "--growth", "4", "4", "4", "--projection", "1", "-o", str(out)]) == 0
    model, _ = checkpoint.load_generator(out)
    assert model.stages[2].projection == 1
    for k in range(3):  # the same weights; only the fixed projection is new
        for (name, w), (_, v) in zip(model.stages[k].state_dict().items(), a.stages[k].state_dict().items()):
            assert torch.equal(w, v), name
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        assert (model(x)[0] - a(x)[0]).abs().max() > 1e-4  # the projection moved the output onto the input


def test_texture_strength_scales_the_last_stages_detail_only(tmp_path, capsys):
    from training.texture_strength import main as strength

    a, _ = saved(tmp_path, dataclasses.replace(SMALL, projection=1), "a.pt", 0)
    out = tmp_path / "soft.pt"
    assert strength([str(tmp_path / "a.pt"), "--gain", "0.5", "-o", str(out)]) == 0
    soft, meta = checkpoint.load_generator(out)
    assert meta["texture_gain"] == 0.5 and meta["step"] == 1
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        full, half = a(x), soft(x)
        flat = MultiScaleGenerator(dataclasses.replace(SMALL, projection=1)).eval()
        flat.load_state_dict(a.state_dict())
        flat.stages[2].tail.weight.zero_()
        flat.stages[2].tail.bias.zero_()
        base = flat.stages[2](full[1])  # the last stage without its learnt residual
        assert torch.equal(half[0], full[0]) and torch.equal(half[1], full[1])  # 10X and 20X untouched
        assert (half[2] - (base + 0.5 * (full[2] - base))).abs().max() < 1e-5  # half the detail
    assert strength([str(tmp_path / "a.pt"), "--gain", "0", "-o", str(out)]) == 2
    assert strength([str(tmp_path / "missing.pt"), "--gain", "0.9", "-o", str(out)]) == 2
    saved(tmp_path, dataclasses.replace(SMALL, bicubic_skip=False), "noskip.pt", 2)  # no residual to scale
    assert strength([str(tmp_path / "noskip.pt"), "--gain", "0.9", "-o", str(out)]) == 2
    assert "Traceback" not in capsys.readouterr().err
