import json

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from tileserver.degrade import degrade
from training import checkpoint
from training.config import load
from training.evaluate import evaluate, format_table, main
from training.model import MultiScaleGenerator

TILES = ["TCGA-38-6178-01Z-00-DX1.tif", "TCGA-G9-6363-01Z-00-DX1.tif"]


@pytest.fixture
def smoke_checkpoint(tmp_path):
    cfg = load("training/configs/smoke.yaml", ["data.jpeg_quality=90"])
    path = tmp_path / "smoke.pt"
    checkpoint.save(path, MultiScaleGenerator(cfg.model).eval(), name="smoke", config={"data": {"jpeg_quality": 90}},
                    val_images=TILES)
    return path


def test_evaluate_on_two_real_tiles_matches_direct_bicubic(monuseg, smoke_checkpoint, tmp_path):
    out = tmp_path / "report"
    summary = evaluate(smoke_checkpoint, [monuseg / t for t in TILES], out)
    per_image = {}
    for t in TILES:
        with Image.open(monuseg / t) as im:
            real40 = np.asarray(im.convert("RGB"))
        lr = degrade(real40, 8, jpeg_quality=90)  # the input the model is evaluated on
        for f, scale in ((2, "10X"), (4, "20X"), (8, "40X")):
            real = degrade(real40, 8 // f)
            bic = np.asarray(Image.fromarray(lr).resize((lr.shape[1] * f, lr.shape[0] * f), Image.Resampling.BICUBIC))
            per_image.setdefault(scale, []).append(
                (peak_signal_noise_ratio(real, bic, data_range=255), structural_similarity(real, bic, channel_axis=2, data_range=255))
            )
    for scale, values in per_image.items():
        assert summary["mean"][f"{scale}_bicubic_psnr_rgb"] == pytest.approx(np.mean([v[0] for v in values]), abs=1e-6)
        assert summary["mean"][f"{scale}_bicubic_ssim"] == pytest.approx(np.mean([v[1] for v in values]), abs=1e-6)
        assert 15 < summary["mean"][f"{scale}_sr_psnr_rgb"] < 40
    assert summary["images"] == 2 and summary["input_jpeg_quality"] == 90
    saved = json.loads((out / "summary.json").read_text())
    assert saved["gain"]["40X"]["psnr_y"] == pytest.approx(summary["gain"]["40X"]["psnr_y"])
    assert len((out / "per_image.csv").read_text().splitlines()) == 3
    with Image.open(out / "crops.png") as png:
        assert png.size[1] > 400
    table = format_table(summary)
    assert all(s in table for s in ("10X", "20X", "40X"))


def test_evaluate_cli(monuseg, smoke_checkpoint, capsys):
    assert main([str(smoke_checkpoint), "--data", str(monuseg)]) == 0
    assert "40X" in capsys.readouterr().out
    assert main([str(smoke_checkpoint.with_name("missing.pt"))]) == 2
