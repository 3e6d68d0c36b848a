from pathlib import Path

import numpy as np
from PIL import Image
import pytest
import tifffile

from tileserver.degrade import halve
from training.augment import AugmentConfig, degrade_input, recolour, sharpen
from training.metrics import band_power
from training.data import (
    AUGMENTATIONS, BatchSampler, DataError, SourceSpec, augment, build_dataset, curriculum_threshold, flatness,
    patient_id, sample_pair, split_by_patient,
)
from training.sources import SlideSource, TileSource


def test_flatness_of_hand_made_patches():
    assert flatness(np.full((16, 16, 3), 128, np.uint8)) == 0.0
    # vertical stripes 0/255: each row has std 0.5 (in [0,1]), each column std 0 → max = 0.5
    stripes = np.zeros((16, 16, 3), np.uint8)
    stripes[:, ::2] = 255
    assert flatness(stripes) == pytest.approx(0.5)
    assert flatness(stripes.transpose(1, 0, 2)) == pytest.approx(0.5)
    # stripes in one channel only: averaged over channels
    one = np.zeros((16, 16, 3), np.uint8)
    one[:, ::2, 0] = 255
    assert flatness(one) == pytest.approx(0.5 / 3)


def test_curriculum_schedule_as_in_the_paper():
    assert [curriculum_threshold(e) for e in (0, 4, 5, 9, 10, 74, 75, 200)] == pytest.approx(
        [0, 0, 0.01, 0.01, 0.02, 0.14, 0.15, 0.15]
    )


def textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


class FlatThenTextured:
    """A source whose first n windows are flat."""

    name = "test"

    def __init__(self, flat: int):
        self.flat, self.calls = flat, 0

    def window(self, rng, side, margin):
        self.calls += 1
        if self.calls <= self.flat:
            return np.full((side, side, 3), 90, np.uint8), 0, 0
        return np.kron(textured(side // 8, side // 8, self.calls), np.ones((8, 8, 1), np.uint8)), 0, 0


def test_sampler_rejects_flat_crops_while_the_threshold_asks():
    src = FlatThenTextured(flat=5)
    batch = BatchSampler([src], crop=8, batch=2).next(threshold=0.1)
    assert src.calls == 7
    assert all(flatness(b) > 0.1 for b in batch[0])


def test_sampler_gives_up_after_50_rejections_per_item():
    src = FlatThenTextured(flat=10_000)
    batch = BatchSampler([src], crop=8, batch=2).next(threshold=0.1)
    assert src.calls == 50 * 2 + 2
    assert batch[0].shape == (2, 8, 8, 3)


def test_crops_are_aligned_across_scales():
    img40 = textured(512, 512)
    src = TileSource(img40, "t")
    rng = np.random.default_rng(3)
    lr, x10, x20, x40 = sample_pair(src, rng, 16)
    assert [c.shape[0] for c in (lr, x10, x20, x40)] == [16, 32, 64, 128]
    # each scale is the halving of the next one up, away from crop borders
    np.testing.assert_array_equal(halve(x40)[4:-4, 4:-4], x20[4:-4, 4:-4])
    np.testing.assert_array_equal(halve(x10)[2:-2, 2:-2], lr[2:-2, 2:-2])


def test_window_margin_makes_crops_equal_to_whole_image_degradation(he40):
    """With real context around it, a crop's lower scales are exactly those of the whole image."""
    from training.data import scale_levels

    img40 = np.ascontiguousarray(he40[:512, :512])
    whole = scale_levels(img40)
    src = TileSource(img40, "t")
    rng = np.random.default_rng(1)
    inner = 0
    for _ in range(6):
        crops = sample_pair(src, rng, 16)
        y, x = next((y, x) for y in range(0, 512 - 127, 8) for x in range(0, 512 - 127, 8)
                    if np.array_equal(img40[y:y + 128, x:x + 128], crops[3]))
        if 32 <= y <= 512 - 128 - 32 and 32 <= x <= 512 - 128 - 32:
            inner += 1
            np.testing.assert_array_equal(crops[0], whole[0][y // 8:y // 8 + 16, x // 8:x // 8 + 16])
            np.testing.assert_array_equal(crops[2], whole[2][y // 2:y // 2 + 64, x // 2:x // 2 + 64])
    assert inner >= 2


def test_recolour_changes_colour_not_structure_and_input_degradation_only_touches_5x(he40):
    img = np.ascontiguousarray(he40[:256, :256])
    rng = np.random.default_rng(0)
    assert recolour(img, AugmentConfig(), rng) is img
    out = recolour(img, AugmentConfig(hed=0.1, brightness=0.1, contrast=0.1, saturation=0.1), rng)
    assert out.shape == img.shape and not np.array_equal(out, img)
    # the same structure: strongly correlated luma
    assert np.corrcoef(out.mean(2).ravel(), img.mean(2).ravel())[0, 1] > 0.9
    blurred = degrade_input(img[:32, :32], AugmentConfig(defocus=1.0, defocus_p=1.0), None, rng)
    assert blurred.std() < img[:32, :32].std()
    q = AugmentConfig(jpeg_range=(30, 30))
    assert not np.array_equal(degrade_input(img[:32, :32], q, None, rng), img[:32, :32])
    with pytest.raises(ValueError, match="jpeg_range"):
        AugmentConfig(jpeg_range=(90, 10))


def test_sharpen_adds_fine_detail_and_keeps_the_mean(he40):
    img = np.ascontiguousarray(he40[:256, :256])
    rng = np.random.default_rng(1)
    assert sharpen(img, AugmentConfig(), rng) is img
    out = sharpen(img, AugmentConfig(sharpen=2.0), rng)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert abs(out.astype(float).mean() - img.astype(float).mean()) < 2.0
    gain = band_power(out) / band_power(img)  # the four bands, coarse to fine
    assert gain[0] < gain[1] < gain[2] and gain[2] > 1.1
    with pytest.raises(ValueError, match="sharpen"):
        AugmentConfig(sharpen=-0.1)


def test_sampler_draws_sources_by_weight():
    class Const:
        def __init__(self, value):
            self.name, self.value = f"c{value}", value

        def window(self, rng, side, margin):
            return np.full((side, side, 3), self.value, np.uint8), 0, 0

    sampler = BatchSampler([Const(10), Const(200)], crop=4, batch=400, weights=[1, 3], seed=0)
    lr = sampler.next()[0]
    share = float(np.mean(lr[:, 0, 0, 0] > 100))
    assert 0.68 < share < 0.82  # 3/4 expected; binomial sd 0.02


def test_same_augmentation_at_every_scale():
    crops = [textured(4 * 2**i, 4 * 2**i, i) for i in range(4)]
    assert len(AUGMENTATIONS) == 9
    for k, flip in AUGMENTATIONS:
        out = augment(crops, k, flip)
        for c, o in zip(crops, out):
            ref = np.rot90(c, k)
            ref = ref[:, ::-1] if flip == "h" else ref[::-1] if flip == "v" else ref
            np.testing.assert_array_equal(o, ref)


def test_small_tiles_are_refused():
    with pytest.raises(DataError, match="512"):
        TileSource(textured(400, 600), "small")


def test_named_sources_hold_out_patients_and_whole_labs(tmp_path):
    for lab, names in {"a": ["TCGA-AA-0001-01Z.png", "TCGA-AA-0002-01Z.png"],
                       "b": ["normal_tumor_004_1_2.png", "tumor_tumor_064_3_4.png", "tumor_tumor_064_5_6.png"],
                       "c": ["x.png"]}.items():
        (tmp_path / lab).mkdir()
        for n in names:
            Image.fromarray(textured(256, 256)).save(tmp_path / lab / n)
    Image.fromarray(textured(100, 100)).save(tmp_path / "a" / "TCGA-AA-0003-01Z.png")  # below min_size
    specs = [SourceSpec.from_dict({"name": "a", "path": "a", "val_patients": ["TCGA-AA-0002"], "weight": 2}),
             SourceSpec.from_dict({"name": "b", "path": "b", "lab": "lab-b", "val_patients": ["tumor_064"]}),
             SourceSpec.from_dict({"name": "c", "path": "c", "held_out": True})]
    ds = build_dataset(specs, tmp_path)
    assert [p.name for p in ds.train_paths] == ["TCGA-AA-0001-01Z.png", "normal_tumor_004_1_2.png"]  # 0003 too small
    assert [(lab, p.name) for lab, p in ds.val] == [("a", "TCGA-AA-0002-01Z.png"), ("lab-b", "tumor_tumor_064_3_4.png"),
                                                     ("lab-b", "tumor_tumor_064_5_6.png"), ("c", "x.png")]
    assert ds.seen_labs == ["a", "lab-b"]
    assert [w for _, w, _ in ds.train] == [2.0, 1.0]  # the small image was filtered out; weight shared per source
    with pytest.raises(DataError, match="unknown keys"):
        SourceSpec.from_dict({"name": "a", "path": "a", "wieght": 1})


def test_split_is_by_patient_never_by_crop():
    paths = [Path(n) for n in ("TCGA-AA-0001-01Z-00-DX1.tif", "TCGA-AA-0001-01Z-00-DX2.tif", "TCGA-BB-0002-01Z.tif", "other.png")]
    assert patient_id(paths[0]) == patient_id(paths[1]) == "TCGA-AA-0001"
    assert patient_id(Path("normal_tumor_004_37276_186047.png")) == "tumor_004"
    train, val = split_by_patient(paths, val_patients=["tcga-aa-0001"])
    assert val == paths[:2] and train == paths[2:]
    train, val = split_by_patient(paths, val_count=1)
    assert val == [paths[3]]
    with pytest.raises(DataError, match="not in the data"):
        split_by_patient(paths, val_patients=["TCGA-ZZ-9999"])


def write_pyramid_tiff(path: Path, img: np.ndarray, mpp: float | None) -> None:
    res = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"} if mpp else {}
    with tifffile.TiffWriter(path) as w:
        w.write(img, tile=(256, 256), photometric="rgb", compression="zlib", **res)
        half = img[::2, ::2].copy()
        res = {"resolution": (1e4 / (2 * mpp), 1e4 / (2 * mpp)), "resolutionunit": "CENTIMETER"} if mpp else {}
        w.write(half, tile=(256, 256), photometric="rgb", compression="zlib", subfiletype=1, **res)


def tissue_like(h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    img = np.full((h, w, 3), 245, np.uint8)  # glass
    img[: h // 2 + 100] = rng.integers(0, 60, (h // 2 + 100, w, 3)) + np.array([150, 60, 140])  # pink/purple tissue
    return img.astype(np.uint8)


def test_slide_source_samples_tissue_at_40x(tmp_path):
    path = tmp_path / "slide.tif"
    write_pyramid_tiff(path, tissue_like(1024, 1024), mpp=0.25)
    src = SlideSource(path)
    assert src.level == 0
    crops = sample_pair(src, np.random.default_rng(0), 16)
    assert [c.shape[:2] for c in crops] == [(16, 16), (32, 32), (64, 64), (128, 128)]
    assert crops[3].mean() < 235  # from the tissue half, not glass


def test_slide_source_picks_the_40x_level(tmp_path):
    path = tmp_path / "slide80.tif"
    write_pyramid_tiff(path, tissue_like(2048, 2048), mpp=0.125)
    assert SlideSource(path).level == 1


def test_slide_without_mpp_is_refused(tmp_path):
    path = tmp_path / "nompp.tif"
    write_pyramid_tiff(path, tissue_like(1024, 1024), mpp=None)
    with pytest.raises(DataError, match="no microns per pixel"):
        SlideSource(path)


def test_slide_without_a_40x_level_is_refused(tmp_path):
    path = tmp_path / "x20.tif"
    write_pyramid_tiff(path, tissue_like(1024, 1024), mpp=0.5)
    with pytest.raises(DataError, match="no level near 0.25"):
        SlideSource(path)


def test_real_tcga_slide_without_mpp_is_refused(wsi_dir):
    with pytest.raises(DataError, match="no microns per pixel"):
        SlideSource(wsi_dir / "tcga-cr-7395-01a-01-ts1.svs")
