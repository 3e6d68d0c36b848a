import json

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from tileserver.degrade import degrade
from training import checkpoint
from training.config import load
from training.evaluate import evaluate, main
from training.metrics import band_power, direction_bias
from training.model import MultiScaleGenerator
from training.report import tables

TILES = ["TCGA-38-6178-01Z-00-DX1.tif", "TCGA-G9-6363-01Z-00-DX1.tif"]


@pytest.fixture
def smoke_checkpoint(tmp_path):
    cfg = load("training/configs/smoke.yaml", ["data.jpeg_quality=90"])
    path = tmp_path / "smoke.pt"
    checkpoint.save(path, MultiScaleGenerator(cfg.model).eval(), name="smoke", config={"data": {"jpeg_quality": 90}},
                    val_images=TILES, val_labs=["lab-a", "lab-b"])
    return path


def test_evaluate_per_lab_matches_direct_bicubic(monuseg, smoke_checkpoint, tmp_path):
    out = tmp_path / "report"
    items = [("lab-a", monuseg / TILES[0]), ("lab-b", monuseg / TILES[1])]
    report = evaluate([smoke_checkpoint], items, out, progress=False)
    m = report["models"]["smoke"]
    assert m["labs"] == ["lab-a", "lab-b"] and m["input_jpeg_quality"] == 90
    for lab, tile in items:
        with Image.open(tile) as im:
            real40 = np.asarray(im.convert("RGB"))
        lr = degrade(real40, 8, jpeg_quality=90)  # the input the model is evaluated on
        for f, scale in ((2, "10X"), (4, "20X"), (8, "40X")):
            real = degrade(real40, 8 // f)
            bic = np.asarray(Image.fromarray(lr).resize((lr.shape[1] * f, lr.shape[0] * f), Image.Resampling.BICUBIC))
            assert m["bicubic"][lab][f"{scale}_psnr_rgb"] == pytest.approx(peak_signal_noise_ratio(real, bic, data_range=255), abs=1e-6)
            assert m["bicubic"][lab][f"{scale}_ssim"] == pytest.approx(
                structural_similarity(real, bic, channel_axis=2, data_range=255), abs=1e-6)
            assert 15 < m["model"][lab][f"{scale}_psnr_rgb"] < 40
        # bicubic keeps little of the real 40X detail above 1/8 cycles/px
        assert m["bicubic"][lab]["40X_band2"] < 0.2
        assert 20 < m["bicubic"][lab]["consistency_psnr"] < 50
    mean = m["mean_over_labs"]["gain"]["40X_psnr_rgb"]
    assert mean == pytest.approx((m["gain"]["lab-a"]["40X_psnr_rgb"] + m["gain"]["lab-b"]["40X_psnr_rgb"]) / 2)
    worst = m["worst_lab"]["40X"]
    assert worst["gain_psnr_rgb"] == min(m["gain"][lab]["40X_psnr_rgb"] for lab in ("lab-a", "lab-b"))
    saved = json.loads((out / "summary.json").read_text())
    assert saved["models"]["smoke"]["gain"]["lab-a"]["40X_psnr_y"] == pytest.approx(m["gain"]["lab-a"]["40X_psnr_y"])
    assert len((out / "per_image.csv").read_text().splitlines()) == 1 + 2 * 2  # model and bicubic rows per image
    for lab in ("lab-a", "lab-b"):
        with Image.open(out / f"crops-{lab}.png") as png:
            assert png.size[1] > 400
    text = tables(report)
    assert all(s in text for s in ("10X", "20X", "40X", "lab-a", "worst lab", "Band energy", "Consistency"))


def test_band_power_of_a_pure_tone_lands_in_its_band():
    x = np.arange(256)
    for cycles, band in ((1 / 20, 0), (1 / 10, 1), (1 / 6, 2), (1 / 3, 3)):
        tone = (128 + 100 * np.sin(2 * np.pi * cycles * x))[None, :].repeat(256, 0)
        img = np.repeat(tone[..., None], 3, axis=2).astype(np.uint8)
        power = band_power(img)
        assert int(np.argmax(power)) == band, (cycles, power)


def test_direction_bias_tells_streaks_from_isotropic_texture():
    y, x = np.mgrid[:256, :256]
    streaks = 128 + 100 * np.sin(2 * np.pi * (0.12 * x + 0.12 * y))  # one direction, 0.17 cycles/px
    rng = np.random.default_rng(0)
    spectrum = np.fft.fft2(rng.normal(size=(256, 256)))
    radius = np.hypot(*np.meshgrid(np.fft.fftfreq(256), np.fft.fftfreq(256), indexing="ij"))
    grain = np.real(np.fft.ifft2(spectrum * ((radius >= 1 / 8) & (radius < 1 / 4))))
    grain = 128 + 60 * grain / grain.std()  # the same band in every direction
    as_rgb = lambda a: np.repeat(np.clip(a, 0, 255)[..., None], 3, axis=2).astype(np.uint8)
    assert direction_bias(as_rgb(streaks)) > 5
    assert direction_bias(as_rgb(grain)) < 1.3
    assert direction_bias(as_rgb(grain.T)) == pytest.approx(direction_bias(as_rgb(grain)), rel=0.2)


def test_evaluate_cli(monuseg, smoke_checkpoint, capsys):
    assert main([str(smoke_checkpoint), "--data", str(monuseg)]) == 0
    out = capsys.readouterr().out
    assert "40X" in out and "lab-a" in out
    assert main([str(smoke_checkpoint.with_name("missing.pt"))]) == 2


def test_evaluate_says_where_checkpoints_run_and_refuses_a_missing_gpu(he40, smoke_checkpoint, tmp_path, capsys):
    """Real H&E (the PyPI stand-in when ../shared is absent)."""
    import torch

    Image.fromarray(he40[:256, :256]).save(tmp_path / "a.png")
    args = [str(smoke_checkpoint), "--data", str(tmp_path), "--images", "a.png"]
    assert main(args + ["--device", "cpu"]) == 0
    assert "checkpoints run on cpu" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(args + ["--device", "cuda"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err


def test_texture_gain_study_band_power_in_closed_form_matches_the_scaled_image():
    """training/ablation/texture_gain.py's ratio(t, g) from |B|², |D|² and B·D* equals the band power of
    B + g·(y − B) computed directly, in the four bands and in the 16 fine ones."""
    from training.ablation import texture_gain as tg
    from training.metrics import bicubic_up

    rng = np.random.default_rng(3)
    img40 = rng.integers(0, 256, (128, 128, 3)).astype(np.uint8)
    y20 = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)  # model outputs are uint8
    y40 = rng.integers(0, 256, (128, 128, 3)).astype(np.uint8)
    upscale = lambda x5: [None, y20, y40]  # noqa: E731  (the study's (10X, 20X, 40X) of one model)
    for bands in (tg.BANDS, tg.FINE):
        t = tg.image_terms(img40, upscale, None, bands)
        b = bicubic_up(y20, 2)
        for g in (0.0, 0.7, 1.3):
            direct = band_power(b + g * (y40.astype(np.float64) - b), bands) / band_power(tg.scale_levels(img40)[3], bands)
            np.testing.assert_allclose(tg.ratio(t, g), direct, rtol=1e-6)
    assert "output/real" in tg.fine_table([("lab-a", t)])


def test_paired_differences_match_the_t_interval_and_pool_labs():
    """One lab: the mean of B − A and scipy's paired t-interval; over labs: the mean of the lab means with
    the labs' variances added; a lab of one image gives no interval (None, not NaN, in the JSON)."""
    from scipy import stats

    from training.report import difference_table, paired_differences
    rng = np.random.default_rng(0)
    rows_a, rows_b = [], []
    for lab, n, shift in (("x", 12, 0.3), ("y", 7, -0.1), ("z", 1, 0.5)):
        for i in range(n):
            a = {f"{s}_psnr_rgb": 20 + rng.normal() for s in ("10X", "20X", "40X")}
            rows_a.append({"lab": lab, "image": f"{lab}{i}", **a})
            rows_b.append({"lab": lab, "image": f"{lab}{i}", **{k: v + shift + 0.2 * rng.normal() for k, v in a.items()}})
    d = paired_differences(rows_a, rows_b)
    x = np.array([b["20X_psnr_rgb"] - a["20X_psnr_rgb"] for a, b in zip(rows_a, rows_b) if a["lab"] == "x"])
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert d["x"]["images"] == 12 and d["x"]["20X"][0] == pytest.approx(x.mean())
    assert d["x"]["20X"][1] == pytest.approx((hi - lo) / 2)
    assert d["z"]["40X"][1] is None and d["mean over labs"]["40X"][1] is None
    two = paired_differences([r for r in rows_a if r["lab"] != "z"], [r for r in rows_b if r["lab"] != "z"])
    assert two["mean over labs"]["10X"][0] == pytest.approx((two["x"]["10X"][0] + two["y"]["10X"][0]) / 2)
    assert two["mean over labs"]["10X"][1] < max(two["x"]["10X"][1], two["y"]["10X"][1])  # two labs' means, averaged
    json.dumps(d, allow_nan=False)
    shifted = paired_differences(rows_a[:3], [{**r, "10X_psnr_rgb": r["10X_psnr_rgb"] + 0.5} for r in rows_a[:3]])
    assert shifted["x"]["10X"] == (pytest.approx(0.5), 0.0)  # every image moved alike: an interval of zero width
    with pytest.raises(ValueError):
        paired_differences(rows_a, rows_b[::-1])
    text = difference_table({"models": {"A": {}, "B": {}}, "differences": {"B": d}})
    assert "| x | 12 | B | " in text and "±" in text


def test_evaluate_two_models_reports_their_paired_difference(he40, smoke_checkpoint, tmp_path):
    """Real H&E (the PyPI stand-in when ../shared is absent): two quarters of one tile as two images."""
    import torch
    cfg = load("training/configs/smoke.yaml", ["data.jpeg_quality=90"])
    torch.manual_seed(1)
    other = tmp_path / "other.pt"
    checkpoint.save(other, MultiScaleGenerator(cfg.model).eval(), name="other", config={"data": {"jpeg_quality": 90}})
    items = []
    for i, crop in enumerate((he40[:256, :256], he40[-256:, -256:])):
        Image.fromarray(crop).save(tmp_path / f"q{i}.png")
        items.append(("lab-a", tmp_path / f"q{i}.png"))
    report = evaluate([smoke_checkpoint, other], items, None, progress=False)
    d = report["differences"]["other"]
    for s in ("10X", "20X", "40X"):
        expected = report["models"]["other"]["gain"]["lab-a"][f"{s}_psnr_rgb"] - report["models"]["smoke"]["gain"]["lab-a"][f"{s}_psnr_rgb"]
        assert d["lab-a"][s][0] == pytest.approx(expected)
    assert "Paired difference against smoke" in tables(report)
