import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training import checkpoint
from training.config import ConfigError, load, to_dict
from training.losses import GeneratorLoss, LossWeights, equivariance_loss, fft_loss, ssim_loss
from training.model import MultiScaleGenerator
from training.train import learning_rate, main, to_tensors, train

SMOKE = "training/configs/smoke.yaml"
CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


def test_overrides_and_unknown_keys():
    cfg = load(SMOKE, ["data.batch=3", "model.features=12", "optim.betas=[0.8, 0.9]", "run.max_minutes=1.5"])
    assert (cfg.data.batch, cfg.model.features, cfg.optim.betas, cfg.run.max_minutes) == (3, 12, (0.8, 0.9), 1.5)
    assert to_dict(cfg)["optim"]["betas"] == [0.8, 0.9]
    with pytest.raises(ConfigError, match="unknown setting"):
        load(SMOKE, ["data.bacth=3"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load(SMOKE, ["data.batch"])


def test_step_decay_with_floor():
    cfg = load(SMOKE, ["optim.lr=1e-3", "optim.decay_every_epochs=2", "run.steps_per_epoch=10", "optim.min_lr=2e-4"])
    assert [learning_rate(cfg, s) for s in (0, 19, 20, 40, 60, 1000)] == pytest.approx([1e-3, 1e-3, 5e-4, 2.5e-4, 2e-4, 2e-4])


def fixed_batch(seed=0, n=2, crop=16):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (n, crop * 2**i, crop * 2**i, 3), dtype=np.uint8) for i in range(4)]


@pytest.mark.parametrize("extra", [{}, {"ssim": 0.05, "fft": 0.05}, {"mse": 1.0}])
def test_one_optimisation_step_lowers_the_loss(extra):
    torch.manual_seed(0)
    cfg = load(SMOKE)
    model = MultiScaleGenerator(cfg.model)
    loss_fn = GeneratorLoss(LossWeights(l1=0.06, **extra))
    lr5, *targets = to_tensors(fixed_batch(), torch.device("cpu"))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before, parts = loss_fn(model(lr5), targets)
    assert set(parts) == {"l1", *extra}
    opt.zero_grad()
    before.backward()
    opt.step()
    after, _ = loss_fn(model(lr5), targets)
    assert after.item() < before.item()


def test_ssim_and_fft_losses_vanish_on_identical_images():
    x = torch.rand(1, 3, 32, 32)
    assert ssim_loss(x, x).item() == pytest.approx(0, abs=1e-5)
    assert fft_loss(x, x).item() == 0
    assert fft_loss(x, x.flip(-1)).item() > 0


def synthetic_tiles(folder: Path, n: int = 3) -> Path:
    """512-px 40X stand-ins (blurred noise), two 'patients' per image name pattern."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        small = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(small).resize((512, 512), Image.Resampling.BICUBIC).save(folder / f"TCGA-AA-000{i}-01Z.png")
    return folder


@pytest.mark.parametrize("prefetch", [0, 2])
def test_checkpoint_round_trip_and_resume_at_the_same_step(tmp_path, prefetch):
    data = synthetic_tiles(tmp_path / "tiles")
    cfg = load(SMOKE, ["data.val_count=1", "run.epochs=2", "run.steps_per_epoch=3", "data.val_crop=null",
                       f"run.prefetch_batches={prefetch}"])
    straight = tmp_path / "straight"
    train(cfg, data, straight, progress=False)
    half = load(SMOKE, ["data.val_count=1", "run.epochs=1", "run.steps_per_epoch=3", "data.val_crop=null",
                        f"run.prefetch_batches={prefetch}"])
    resumed = tmp_path / "resumed"
    train(half, data, resumed, progress=False)
    assert checkpoint.load(resumed / "last.pt")["step"] == 3
    train(cfg, data, resumed, resume=resumed / "last.pt", progress=False)

    a, b = checkpoint.load(straight / "last.pt"), checkpoint.load(resumed / "last.pt")
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-4, atol=1e-6)
    model, meta = checkpoint.load_generator(straight / "best.pt")
    assert meta["name"] == "smoke" and meta["val_images"] == ["TCGA-AA-0002-01Z.png"]
    assert "optimizer" not in meta and model.args == cfg.model
    released = tmp_path / "release.pt"
    checkpoint.strip_for_release(straight / "last.pt", released)
    assert "optimizer" not in checkpoint.load(released)
    assert released.stat().st_size < (straight / "last.pt").stat().st_size


def test_smoke_training_on_real_tiles_leaves_checkpoint_log_and_curves(monuseg, tmp_path):
    out = tmp_path / "smoke"
    assert main(["--config", SMOKE, "--data", str(monuseg), "--out", str(out), "--set", "run.snapshots=true"]) == 0
    for name in ("best.pt", "last.pt", "log.csv", "curves.png", "config.yaml", "command.txt",
                 "snapshots/step-10.pt", "snapshots/step-20.pt"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [10, 20]
    assert all(float(r["val_psnr_y_40X"]) > 15 for r in rows)
    with Image.open(out / "curves.png") as png:
        assert png.size[0] > 500


def test_cli_errors_exit_2(tmp_path, capsys):
    assert main(["--config", SMOKE, "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["--config", SMOKE, "--set", "model.activation=gelu", "--data", ".", "--out", str(tmp_path / "o")]) == 2
    if not torch.cuda.is_available():
        assert main(["--config", SMOKE, "--data", ".", "--out", str(tmp_path / "o"), "--device", "cuda"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err


def test_adversarial_and_perceptual_training_steps(tmp_path):
    """The paper's full loss: alternating D/G steps and VGG19 features from a weights file."""
    from training.model import VGGFeatures

    vgg_file = tmp_path / "vgg19-dcbb9e9d.pth"
    donor = VGGFeatures(random_weights_for_tests=True)
    torch.save({f"features.{k}": v for k, v in donor.features.state_dict().items()}, vgg_file)
    data = synthetic_tiles(tmp_path / "tiles")
    cfg = load(SMOKE, ["data.val_count=1", "run.epochs=1", "run.steps_per_epoch=2", "loss.adversarial=0.04",
                       "loss.perceptual=0.083", f"loss.vgg_weights={vgg_file}"])
    out = tmp_path / "gan"
    train(cfg, data, out, progress=False)
    with open(out / "log.csv") as f:
        row = next(csv.DictReader(f))
    assert float(row["d_loss"]) > 0 and float(row["perceptual"]) > 0 and float(row["adversarial"]) > 0
    state = checkpoint.load(out / "last.pt")
    assert state["discriminator"] is not None and state["d_optimizer"] is not None


def test_band_energy_term_is_the_evaluated_band_ratio_per_image():
    """The training term is the mean |log| of the band-energy ratio that evaluate.py reports, image by image."""
    from training.losses import band_energy_loss
    from training.metrics import band_power

    rng = np.random.default_rng(1)
    real = [(rng.random((48, 48, 3)) * 255).astype(np.uint8) for _ in range(2)]
    fake = [np.clip(real[0] * 0.4 + 100, 0, 255).astype(np.uint8), real[1]]  # a flattened copy, an exact one
    as_t = lambda imgs: torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255
    expected = np.mean([np.abs(np.log(band_power(f) / band_power(r))).mean() for f, r in zip(fake, real)])
    got = band_energy_loss(as_t(fake), as_t(real)).item()
    assert got > 0.5 and abs(got - expected) < 1e-3 * expected
    assert band_energy_loss(as_t(real), as_t(real)).item() < 1e-6


def test_texture_and_consistency_terms():
    from tileserver.degrade import degrade
    from training.losses import consistency_loss, degrade_torch, spectrum_loss

    torch.manual_seed(0)
    hr = torch.rand(2, 3, 64, 64)
    assert spectrum_loss(hr, hr).item() == 0
    # phase-free: a shifted copy has the same amplitude spectrum, a blurred one does not
    assert spectrum_loss(torch.roll(hr, 5, dims=-1), hr).item() < 1e-4
    blurred = torch.nn.functional.avg_pool2d(hr, 3, 1, 1)
    assert spectrum_loss(blurred, hr).item() > 0.1
    # the differentiable degradation is the ingest one within ~1.5/255
    img = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    t = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    ref = degrade(img, 8).astype(np.float32) / 255
    assert np.abs(degrade_torch(t, 3)[0].permute(1, 2, 0).numpy() - ref).max() < 2 / 255
    lr5 = degrade_torch(hr, 3)
    assert consistency_loss(hr, lr5).item() < 1e-6 and consistency_loss(hr.flip(-1), lr5).item() > 0.01


def test_direction_free_spectrum_term_penalises_streaks_of_one_direction():
    from training.losses import symmetric_spectrum_loss

    y, x = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    streaks = (0.5 + 0.3 * torch.sin(2 * torch.pi * 0.2 * x)).expand(1, 3, 64, 64)
    turned = streaks.transpose(-2, -1)  # the same texture turned by 90 degrees
    crossed = (0.5 + 0.15 * torch.sin(2 * torch.pi * 0.2 * x) + 0.15 * torch.sin(2 * torch.pi * 0.2 * y)).expand(1, 3, 64, 64)
    # against its own turned copy the direction-free target is the same; streaks lose to a texture in both directions
    assert symmetric_spectrum_loss(streaks, turned).item() == pytest.approx(symmetric_spectrum_loss(streaks, streaks).item())
    assert symmetric_spectrum_loss(crossed, streaks).item() < symmetric_spectrum_loss(streaks, streaks).item()


def test_equivariance_term_is_zero_for_a_turning_model_and_trains(tmp_path):
    from training.data import SourceSpec, build_dataset
    from training.train import Trainer

    data = synthetic_tiles(tmp_path / "tiles")
    cfg = load(SMOKE, ["data.val_count=1", "run.epochs=1", "run.steps_per_epoch=2", "loss.equivariance=0.5",
                       "loss.spectrum=0.01", "loss.spectrum_symmetric=true", "run.select=last"])

    trainer = Trainer(cfg, build_dataset([SourceSpec(name="t", path=".", val_count=1)], data), torch.device("cpu"))
    lr5 = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        for stage in trainer.model.stages:  # residuals off: bicubic x2 three times, which turns with its input
            for p in stage.parameters():
                p.zero_()
        out = trainer.model(lr5)[-1]
        assert equivariance_loss(trainer.model, lr5, out).item() < 1e-5
        assert equivariance_loss(trainer.model, lr5, out.flip(-1)).item() > 0.01
    out_dir = tmp_path / "eq"
    train(cfg, data, out_dir, progress=False)
    with open(out_dir / "log.csv") as f:
        row = next(csv.DictReader(f))
    assert float(row["equivariance"]) > 0 and float(row["spectrum"]) > 0


def test_distillation_copies_a_teacher_and_needs_one(tmp_path):
    data = synthetic_tiles(tmp_path / "tiles")
    base = ["data.val_count=1", "run.epochs=1", "run.steps_per_epoch=2", "run.select=last"]
    train(load(SMOKE, base), data, tmp_path / "teacher", progress=False)
    cfg = load(SMOKE, base + ["loss.l1=0", "loss.distill=1", f"loss.teacher={tmp_path / 'teacher' / 'last.pt'}"])
    train(cfg, data, tmp_path / "student", progress=False)
    with open(tmp_path / "student" / "log.csv") as f:
        assert float(next(csv.DictReader(f))["distill"]) > 0
    with pytest.raises(ConfigError, match="loss.teacher"):
        train(load(SMOKE, base + ["loss.distill=1"]), data, tmp_path / "orphan", progress=False)
    with pytest.raises(ConfigError, match="missing.pt"):
        train(load(SMOKE, base + ["loss.distill=1", f"loss.teacher={tmp_path / 'missing.pt'}"]), data, tmp_path / "o2",
              progress=False)


def test_realistic_losses_train_with_a_narrow_discriminator(tmp_path):
    data = synthetic_tiles(tmp_path / "tiles")
    cfg = load(SMOKE, ["data.val_count=1", "run.epochs=1", "run.steps_per_epoch=2", "loss.adversarial=0.01",
                       "loss.feature_match=0.1", "loss.spectrum=0.01", "loss.consistency=1", "loss.disc_width=8",
                       "run.select=last"])
    out = tmp_path / "realistic"
    train(cfg, data, out, progress=False)
    with open(out / "log.csv") as f:
        row = next(csv.DictReader(f))
    for k in ("adversarial", "feature_match", "spectrum", "consistency", "d_loss", "val_consistency", "val_40X_band2"):
        assert float(row[k]) > 0, k
    state = checkpoint.load(out / "last.pt")
    assert state["discriminator"]["net.0.weight"].shape[0] == 8  # width 8 instead of the paper's 64


def test_config_extends_a_base_file(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\nmodel: {features: 12, growth: 6}\ndata: {batch: 3}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nname: child\nmodel: {growth: 4}\n")
    cfg = load(tmp_path / "child.yaml", ["data.crop=8"])
    assert (cfg.name, cfg.model.features, cfg.model.growth, cfg.data.batch, cfg.data.crop) == ("child", 12, 4, 3, 8)
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load(tmp_path / "loop.yaml")
    realistic = load("training/configs/realistic.yaml")
    faithful = load("training/configs/faithful.yaml")
    assert dataclasses.replace(realistic.model, projection=0) == faithful.model
    assert realistic.data.sources == faithful.data.sources and realistic.kind == "realistic" and faithful.kind == "faithful"
    assert realistic.model.projection == 1 and realistic.loss.adversarial > 0 and faithful.loss.adversarial == 0


def test_back_projection_makes_each_stage_consistent_with_its_input():
    """With projection, every stage's output degraded by the ingest kernel matches its input."""
    from training.losses import degrade_torch
    from training.model import GeneratorArgs, SRStage

    torch.manual_seed(0)
    args = dict(features=8, growth=4, blocks=1, rdbs_per_block=1, dense_layers=1, bicubic_skip=True, init="kaiming")
    x = torch.rand(1, 3, 40, 40)
    plain, projected = SRStage(GeneratorArgs(**args)), SRStage(GeneratorArgs(**args, projection=2))
    projected.load_state_dict(plain.state_dict())
    for stage in (plain, projected):
        stage.tail.reset_parameters()  # a residual big enough to disagree with the input
    projected.load_state_dict(plain.state_dict())
    err = lambda s: (degrade_torch(s(x), 1) - x)[..., 6:-6, 6:-6].abs().mean().item()
    assert err(projected) < err(plain) / 3


def test_only_the_named_stages_train():
    from training.train import trainable

    torch.manual_seed(0)
    model = MultiScaleGenerator(load(SMOKE).model)
    before = [s.head.weight.detach().clone() for s in model.stages]
    opt = torch.optim.Adam(trainable(model, [3]), lr=1e-2)
    lr5, *targets = to_tensors(fixed_batch(), torch.device("cpu"))
    loss, _ = GeneratorLoss(LossWeights())(model(lr5), targets)
    loss.backward()
    opt.step()
    assert torch.equal(model.stages[0].head.weight, before[0]) and torch.equal(model.stages[1].head.weight, before[1])
    assert not torch.equal(model.stages[2].head.weight, before[2])
    with pytest.raises(ConfigError, match="train_stages"):
        trainable(model, [4])


def test_a_log_with_old_columns_is_rewritten_with_its_rows_kept(tmp_path):
    from training.train import write_log_row

    log = tmp_path / "log.csv"
    log.write_text("step,loss\n150,0.5\n")
    write_log_row(log, ["step", "loss", "band_energy"], {"step": 300, "loss": 0.4, "band_energy": 0.2})
    assert log.read_text().splitlines() == ["step,loss,band_energy", "150,0.5,", "300,0.4,0.2"]


def test_the_gpu_config_is_the_paper_network_on_the_faithful_recipe():
    """paper-gpu.yaml differs from faithful.yaml in network size (paper.yaml's) and in what a
    clock-stopped GPU run needs, not in data, augmentation or loss."""
    gpu, paper, faithful = (load(CONFIGS / f"{n}.yaml") for n in ("paper-gpu", "paper", "faithful"))
    for name in ("features", "growth", "blocks", "rdbs_per_block", "dense_layers", "activation"):
        assert getattr(gpu.model, name) == getattr(paper.model, name)
    assert gpu.data == faithful.data and gpu.loss == faithful.loss
    assert gpu.optim.decay_every_epochs > gpu.run.epochs  # a constant learning rate: the clock stops the run


def test_prefetched_batches_are_the_samplers_own_in_order_with_each_steps_threshold(tmp_path):
    from training.data import BatchPrefetcher, BatchSampler
    from training.sources import TileSource

    folder = synthetic_tiles(tmp_path / "tiles")
    sources = [TileSource(np.asarray(Image.open(p)), p.name) for p in sorted(folder.iterdir())]
    direct, ahead = (BatchSampler(sources, crop=16, batch=2, seed=3) for _ in range(2))
    threshold_at = lambda step: 0.0 if step < 7 else 0.02  # noqa: E731 - the curriculum steps up at step 7
    prefetcher = BatchPrefetcher(ahead, threshold_at, first_step=5, depth=2)
    try:
        for step in range(5, 10):
            want = direct.next(threshold_at(step))
            got = prefetcher.next()
            assert all(np.array_equal(a, b) for a, b in zip(want, got))
            assert prefetcher.state == direct.rng.bit_generator.state  # what a checkpoint saves
    finally:
        prefetcher.close()


def test_training_with_prefetch_is_training_without_it(tmp_path):
    data = synthetic_tiles(tmp_path / "tiles")
    base = ["data.val_count=1", "run.epochs=2", "run.steps_per_epoch=3", "data.val_crop=null"]
    for prefetch in (0, 3):
        train(load(SMOKE, base + [f"run.prefetch_batches={prefetch}"]), data, tmp_path / f"p{prefetch}", progress=False)
    a, b = checkpoint.load(tmp_path / "p0" / "last.pt"), checkpoint.load(tmp_path / "p3" / "last.pt")
    assert a["step"] == b["step"] == 6
    assert a["rng"]["sampler"] == b["rng"]["sampler"]
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)


def test_the_training_batches_benchmark_times_both_ways(tmp_path, capsys):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "training_batches.py"
    spec = importlib.util.spec_from_file_location("training_batches", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    data = synthetic_tiles(tmp_path / "tiles")
    config = tmp_path / "smoke.yaml"
    config.write_text(f"extends: {Path(SMOKE).resolve()}\ndata: {{val_count: 1}}\n")
    assert bench.main(["--data", str(data), "--config", str(config), "--device", "cpu", "--steps", "2",
                       "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "the sampler alone" in out and "prefetch 2:" in out and "median steps/s: in turn" in out
    assert bench.main(["--data", str(tmp_path / "missing"), "--config", str(config), "--device", "cpu"]) == 2


def test_stopping_the_prefetch_thread_hands_the_sampler_back_where_training_is(tmp_path):
    from training.data import SourceSpec, build_dataset
    from training.train import Trainer

    data = synthetic_tiles(tmp_path / "tiles")
    ahead, in_turn = (Trainer(load(SMOKE, ["data.val_count=1", f"run.prefetch_batches={k}"]),
                              build_dataset([SourceSpec(name="t", path=".", val_count=1)], data), torch.device("cpu"))
                      for k in (3, 0))
    ahead.start_prefetch()
    for t in (ahead, in_turn):
        t.train_step()
    ahead.stop_prefetch()  # the batches made ahead are dropped; the next one is the one training would take
    assert ahead.prefetcher is None
    assert all(np.array_equal(a, b) for a, b in zip(ahead.sampler.next(0.0), in_turn.sampler.next(0.0)))
