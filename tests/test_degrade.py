import numpy as np
import pytest

from tileserver.degrade import degrade, halve, jpeg_roundtrip, pyramid, steps_for_factor


def test_halve_sizes_round_up_for_odd_sides():
    img = np.zeros((7, 10, 3), np.uint8)
    assert halve(img).shape == (4, 5, 3)
    assert halve(np.zeros((8, 8, 3), np.uint8)).shape == (4, 4, 3)


def test_constant_image_stays_constant():
    img = np.full((33, 17, 3), (200, 100, 50), np.uint8)
    out = degrade(img, 8)
    assert out.shape == (5, 3, 3)
    assert (out == np.array([200, 100, 50], np.uint8)).all()


def test_halve_is_an_antialiased_average_of_pixel_pairs():
    # a 1-px checkerboard has no energy below Nyquist/2: antialiased halving gives flat grey
    yy, xx = np.mgrid[:64, :64]
    img = np.repeat((((yy + xx) % 2) * 255).astype(np.uint8)[..., None], 3, axis=2)
    out = halve(img).astype(int)
    assert abs(out[8:-8, 8:-8].mean() - 127.5) < 1.5
    assert out[8:-8, 8:-8].std() < 2


def test_halve_maps_pixel_pairs_to_one_pixel():
    # a step edge on an even column stays on the halved grid at half the column
    img = np.zeros((16, 32, 3), np.uint8)
    img[:, 16:] = 255
    row = halve(img)[4, :, 0].astype(int)
    assert row[:6].max() == 0 and row[10:].min() == 255
    assert row[7] < 128 < row[8]


def test_degrade_factor_must_be_power_of_two():
    assert [steps_for_factor(f) for f in (1, 2, 4, 8)] == [0, 1, 2, 3]
    for bad in (0, 3, 6, 0.5):
        with pytest.raises(ValueError, match="power of two"):
            steps_for_factor(bad)


def test_degrade_equals_repeated_halving_then_jpeg():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    np.testing.assert_array_equal(degrade(img, 4), halve(halve(img)))
    jp = degrade(img, 4, jpeg_quality=90)
    np.testing.assert_array_equal(jp, jpeg_roundtrip(halve(halve(img)), 90))
    assert np.abs(jp.astype(int) - halve(halve(img)).astype(int)).mean() < 12


def test_pyramid_sizes():
    levels = pyramid(np.zeros((1000, 1000, 3), np.uint8), 3)
    assert [lv.shape[:2] for lv in levels] == [(1000, 1000), (500, 500), (250, 250), (125, 125)]


def test_rejects_non_rgb_uint8():
    with pytest.raises(ValueError, match="uint8"):
        halve(np.zeros((4, 4, 3), np.float32))


def test_halve_of_a_window_does_not_depend_on_the_window_shape():
    # a tall strip and the square it is cut from halve to the same pixels (away from the strip's sides)
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    strip = img[:, 16:32]  # 64 x 16: Pillow's one-call resize would run the vertical pass first here
    np.testing.assert_array_equal(halve(np.ascontiguousarray(strip))[:, 2:6], halve(img)[:, 10:14])
