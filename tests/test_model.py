import numpy as np
import pytest
import torch
from PIL import Image

from training.config import load
from training.model import (
    BicubicUp2, GeneratorArgs, MultiScaleGenerator, PatchDiscriminator, SRStage, VGGFeatures, VGGWeightsMissing,
    chain_gflop, count_parameters,
)

CONFIGS = ["paper", "lite", "smoke"]


def config_args(name: str) -> GeneratorArgs:
    return load(f"training/configs/{name}.yaml").model


@pytest.mark.parametrize("name", CONFIGS)
def test_every_stage_doubles_rgb(name):
    model = MultiScaleGenerator(config_args(name)).eval()
    x = torch.rand(2, 3, 12, 10)
    with torch.no_grad():
        outs = model(x)
        assert [tuple(o.shape) for o in outs] == [(2, 3, 24, 20), (2, 3, 48, 40), (2, 3, 96, 80)]
        # each stage is usable on its own, as export needs
        assert tuple(model.stages[2](x).shape) == (2, 3, 24, 20)
        torch.testing.assert_close(model.stages[1](outs[0]), outs[1])


def test_paper_has_16_6_million_parameters_per_stage():
    stage = SRStage(config_args("paper"))
    assert 16.5e6 < count_parameters(stage) < 16.7e6
    # ~715 GFLOP per 256x256 40X tile without context (PAPER-NOTES)
    assert 700 < chain_gflop(config_args("paper"), halo=0) < 730


def test_lite_is_servable_on_a_cpu():
    lite, paper = chain_gflop(config_args("lite")), chain_gflop(config_args("paper"))
    assert lite <= 40
    assert lite < paper / 15


def test_bicubic_skip_matches_pillow_bicubic_in_the_interior():
    # a smooth image: Pillow rounds to uint8 between its two passes, which only matters at overshoots
    rng = np.random.default_rng(0)
    small = rng.integers(40, 216, (6, 5, 3), dtype=np.uint8)
    img = np.array(Image.fromarray(small).resize((20, 24), Image.Resampling.BILINEAR))
    ours = BicubicUp2()(torch.from_numpy(img).permute(2, 0, 1)[None].float())[0].permute(1, 2, 0).numpy()
    pil = np.asarray(Image.fromarray(img).resize((40, 48), Image.Resampling.BICUBIC)).astype(np.float32)
    inner = (slice(4, -4), slice(4, -4))
    diff = np.abs(np.clip(ours, 0, 255)[inner] - pil[inner])
    assert diff.max() <= 1.5 and diff.mean() < 0.5  # Pillow rounds to uint8 after each pass


def test_bicubic_skip_starts_at_bicubic():
    args = GeneratorArgs(features=8, growth=8, blocks=1, rdbs_per_block=1, dense_layers=1, bicubic_skip=True, init="kaiming")
    model = MultiScaleGenerator(args).eval()
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        y = model.stages[0](x)
        assert (y - BicubicUp2()(x)).abs().max() < 0.05


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="activation"):
        GeneratorArgs(activation="gelu")
    with pytest.raises(ValueError, match="blocks"):
        GeneratorArgs(blocks=0)


def test_discriminator_gives_quarter_resolution_logits():
    d = PatchDiscriminator()
    assert tuple(d(torch.rand(2, 3, 64, 48)).shape) == (2, 1, 16, 12)


def test_missing_vgg_weights_fail_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(VGGWeightsMissing, match="vgg19-dcbb9e9d.pth"):
        VGGFeatures()
    with pytest.raises(VGGWeightsMissing, match="not found"):
        VGGFeatures(tmp_path / "nowhere.pth")


def test_vgg_loads_torchvision_layout_and_gives_two_feature_maps(tmp_path):
    donor = VGGFeatures(random_weights_for_tests=True)
    path = tmp_path / "vgg19-dcbb9e9d.pth"
    state = {f"features.{k}": v for k, v in donor.features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(1)  # torchvision's file has the classifier too
    torch.save(state, path)
    vgg = VGGFeatures(path)
    r22, r33 = vgg(torch.rand(1, 3, 32, 32))
    assert tuple(r22.shape) == (1, 128, 16, 16) and tuple(r33.shape) == (1, 256, 8, 8)
    torch.testing.assert_close(vgg.features[0].weight, donor.features[0].weight)


def test_per_stage_capacity_and_flops():
    from training.model import describe, stage_gflop

    a = GeneratorArgs(features=[16, 12, 8], growth=[8, 8, 4], blocks=[2, 1, 1], rdbs_per_block=1, dense_layers=2,
                      bicubic_skip=True, init="kaiming")
    assert a.features == (16, 12, 8) and a.for_stage(0).features == 16 and a.for_stage(2).blocks == 1
    model = MultiScaleGenerator(a)
    assert [s.head.out_channels for s in model.stages] == [16, 12, 8]
    assert len(model.stages[0].body) == 2 and len(model.stages[1].body) == 1
    flops = stage_gflop(a)
    assert len(flops) == 3 and chain_gflop(a) == pytest.approx(sum(flops))
    uniform = GeneratorArgs(features=8, growth=4, blocks=1, rdbs_per_block=1, dense_layers=2, bicubic_skip=True)
    assert stage_gflop(uniform)[2] == pytest.approx(flops[2])  # stage 3 is the same network in both
    assert "GFLOP" in describe(a) and "(" in describe(a)
    with pytest.raises(ValueError, match="lists 2 values for 3 stages"):
        GeneratorArgs(features=[8, 8])


def test_bicubic_skip_stays_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    stage = SRStage(GeneratorArgs(features=8, growth=4, blocks=1, rdbs_per_block=1, dense_layers=1, bicubic_skip=True))
    x = torch.rand(1, 3, 12, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = stage(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, stage(x), atol=0.02, rtol=0)


def test_projection_stages_take_any_size():
    """A back-projecting stage runs on odd sizes (a block at a slide's edge): its ×½ rounds up there,
    and on even sizes it is the plain ×½ the model trained with."""
    import torch

    from training.model import BicubicDown2, GeneratorArgs, SRStage

    x = torch.rand(1, 3, 36, 52)
    assert torch.equal(BicubicDown2(ceil=True)(x), BicubicDown2()(x))
    assert BicubicDown2(ceil=True)(torch.rand(1, 3, 37, 53)).shape[-2:] == (19, 27)
    a = GeneratorArgs(features=8, growth=4, blocks=1, rdbs_per_block=1, dense_layers=2, projection=1)
    for index in range(3):
        assert SRStage(a, index)(torch.rand(2, 3, 37, 53)).shape == (2, 3, 74, 106)
