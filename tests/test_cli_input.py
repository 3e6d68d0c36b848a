"""Bad command-line input to `tileserver ingest | demo | serve`: exit status 2 and one line on
stderr that names the option or path and what is allowed, never a traceback; sources are never
modified and nothing is written. Every check here runs before a model loads, a port is bound or
anything is downloaded (the sources are small synthetic slides that OpenSlide opens)."""
from __future__ import annotations

from pathlib import Path

import pytest

from synthetic import write_pattern_slide
from tileserver.commands import cli, serve
from tileserver.errors import UsageError
from tileserver.files import sha256_file
from tileserver.ingest import pipeline, registry_data
from tileserver.ingest.source import IngestError
from tileserver.settings import Settings, check_redis_url, out_of_range


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, *argv: str) -> str:
    """stderr of a command that must end with exit status 2 and one line, no traceback."""
    code, out, err = run(capsys, *argv)
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def usage_error(capsys, *argv: str) -> str:
    """The last stderr line of a command that argparse refuses (its usage, then one line; status 2)."""
    with pytest.raises(SystemExit) as stop:
        cli.main(list(argv))
    assert stop.value.code == 2
    return capsys.readouterr().err.splitlines()[-1]


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A 20X (0.5 µm/px) Aperio-style source, 1200 × 900 px."""
    return write_pattern_slide(tmp_path_factory.mktemp("src") / "good.svs", 1200, 900, 0.5)


def ingest_refused(capsys, source: Path, out: Path, *flags: str) -> str:
    before = sha256_file(source)
    err = refused(capsys, "ingest", "--no-progress", str(source), "-o", str(out), *flags)
    assert sha256_file(source) == before
    assert [n for n in files_in(out) if n != source.name] == []
    return err


# ---- 1-3: ingest targets ---------------------------------------------------------------------


@pytest.mark.parametrize("flags,words", [
    (("--target-mpp", "1e308"), "at most 10 µm/px"),  # was OverflowError in choose_factor
    (("--source-mpp", "1e-308", "--force"), "from 2 to 16"),
])
def test_overflowing_ratio_is_one_line(good, tmp_path, capsys, flags, words):
    err = ingest_refused(capsys, good, tmp_path / "out", *flags)
    assert words in err and "Overflow" not in err


@pytest.mark.parametrize("flags,words", [
    (("--magnification", "1e-300", "--force"), "--magnification 1e-300: "),  # was a 1 × 1 good.0x.tif
    (("--target-mpp", "1000"), "--target-mpp 1000: "),  # was a 2 × 2 good.0.01x.tif labelled 0X
    (("--magnification", "0.5"), "--magnification 0.5: "),
])
def test_target_coarser_than_1x_refused_before_any_source_is_read(good, tmp_path, capsys, flags, words):
    err = ingest_refused(capsys, good, tmp_path / "out", *flags)
    assert words in err and "(at most 10 µm/px, i.e. 1X or more)" in err and str(good) not in err


def test_factor_beyond_16_refused(good, tmp_path, capsys):
    err = ingest_refused(capsys, good, tmp_path / "out", "--source-mpp", "0.125", "--magnification", "1.25")
    assert str(good) in err and "power of two from 2 to 16" in err


def test_stored_slide_keeps_32_px_a_side(tmp_path, capsys):
    tiny = write_pattern_slide(tmp_path / "tiny.svs", 300, 200, 0.25)
    err = ingest_refused(capsys, tiny, tmp_path, "--magnification", "2.5")
    assert "19 × 13 px" in err and "at least 32 px a side" in err


def test_the_largest_factor_and_coarsest_target_still_ingest(good, tmp_path, capsys):
    code, out, _ = run(capsys, "ingest", "--no-progress", str(good), "-o", str(tmp_path), "--target-mpp", "8")
    assert code == 0 and files_in(tmp_path) == ["good.1.25x.tif"] and "1.25X" in out  # ×1/16 of 0.5 µm/px


@pytest.mark.parametrize("flags", [("--target-mpp", "1e-300"), ("--magnification", "1e300"),
                                   ("--target-mpp", "1e-308")])
def test_target_finer_than_the_source_is_said_not_a_file_name_error(good, tmp_path, capsys, flags):
    err = ingest_refused(capsys, good, tmp_path / "out", *flags)
    assert "already at or below" in err and "serve it directly" in err and "too long" not in err


def test_choose_factor_and_labels_at_the_edges():
    assert pipeline.choose_factor(0.125, 2.0) == 16
    for source, target, words in [(1e-308, 2.0, "from 2 to 16"), (0.0625, 2.0, "from 2 to 16"),
                                  (0.25, 1e308, "1X or more"), (0.25, 20.0, "1X or more")]:
        with pytest.raises(IngestError, match=words):
            pipeline.choose_factor(source, target)
    assert [pipeline.magnification_label(m) for m in (2.0, 8.0, 1e-300, 1e-308)] == ["5x", "1.25x", "1e+301x", "infx"]


def test_same_stem_twice_in_a_batch_is_refused_before_its_output_is_named(good, tmp_path, capsys):
    twin = tmp_path / "twin" / "good.svs"
    twin.parent.mkdir()
    twin.write_bytes(good.read_bytes())
    code, _, err = run(capsys, "ingest", "--no-progress", str(good), str(twin), "-o", str(tmp_path / "out"))
    assert code == 2 and f"{twin}: same output name good.5x.tif as {good}" in err
    assert files_in(tmp_path / "out") == ["good.5x.tif"]


# ---- 4: demo folders -------------------------------------------------------------------------


@pytest.fixture()
def no_download(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args}")

    monkeypatch.setattr(registry_data.subprocess, "run", refuse)


@pytest.mark.parametrize("where", ["file", "/dev/null", "/sys/kernel", "/proc/msr-tileserver-test", "file/sub"])
def test_demo_folder_that_cannot_hold_the_slides_is_one_line(where, tmp_path, capsys, no_download):
    (tmp_path / "file").write_bytes(b"a slide, say")
    folder = str(tmp_path / where) if where.startswith("file") else where
    err = refused(capsys, "demo", folder, "--cache-dir", str(tmp_path / "cache"))
    assert f"cannot write to the output folder {folder}: " in err
    assert (tmp_path / "file").read_bytes() == b"a slide, say"


@pytest.mark.parametrize("where,words", [("file", "it is a file, not a folder"), ("file/sub", "Not a directory")])
def test_demo_cache_folder_that_is_a_file_is_one_line(where, words, tmp_path, capsys, no_download):
    (tmp_path / "file").write_bytes(b"x")
    cache = tmp_path / where
    err = refused(capsys, "demo", str(tmp_path / "slides"), "--cache-dir", str(cache))
    assert err == f"tileserver demo: error: cannot use the cache folder {cache}: {words}\n"
    assert files_in(tmp_path / "slides") == []


# ---- 5-10: serve flags (all checked before the model loads or a port is bound) -----------------


@pytest.mark.parametrize("flag,value,message", [
    ("--tile-size", "100000", "--tile-size must be 2..2048, not 100000"),  # was an ONNX Runtime allocation error
    ("--tile-size", "20000", "--tile-size must be 2..2048, not 20000"),  # was 24 GB, then OOM-killed
    ("--threads", "100000", "--threads must be 0..256, not 100000"),
    ("--threads", "-1", "--threads must be 0..256, not -1"),
    ("--http-threads", "100000", "--http-threads must be 2..512, not 100000"),
    ("--queue", "1000000", "--queue must be 1..4096, not 1000000"),
    ("--prefetch-blocks", "1000000", "--prefetch-blocks must be 0..4096, not 1000000"),
    ("--synthesis-budget", "-1", "--synthesis-budget must be at least 0, not -1"),  # no upper bound: a huge one turns the budget off
    ("--max-side", "100000", "--max-side must be 1..65500, not 100000"),
    ("--max-area", "10000000000000", "--max-area must be 1..4294967296, not 10000000000000"),
    ("--cache-mb", "nan", "--cache-mb must be a finite number >= 0 and <= 1048576, not nan"),
    ("--cache-mb", "1e308", "--cache-mb must be a finite number >= 0 and <= 1048576, not 1e+308"),
    ("--prefetch-mb", "inf", "--prefetch-mb must be a finite number >= 0 and <= 1048576, not inf"),
    ("--drain-timeout", "nan", "--drain-timeout must be a finite number >= 0 and <= 3600, not nan"),
    ("--assume-mpp", "nan", "--assume-mpp must be a finite number > 0, not nan"),
    ("--render-budget", "inf", "--render-budget must be a finite number > 0, not inf"),
    ("--redis-lock-ttl", "1e308", "--redis-lock-ttl must be a finite number > 0 and <= 3600, not 1e+308"),
    ("--base-url", "notaurl", "--base-url must be an absolute http(s)://HOST/PATH URL without user, query, "
                              "fragment or characters to escape, not 'notaurl'"),
    ("--base-url", "ftp://host/iiif", "--base-url must be an absolute"),
    ("--rights", "CC-BY", "--rights must be an absolute http(s) URI"),
    ("--base-url", 'http://a b/ii"if', "--base-url must be an absolute"),  # ids would carry the space and quote
    ("--base-url", "http://user@host/iiif", "--base-url must be an absolute"),
    ("--base-url", "http://host:99999/iiif", "--base-url"),
    ("--base-url", "https://", "--base-url must be an absolute"),
    ("--base-url", "/iiif", "--base-url must be an absolute"),
    ("--base-url", "https://host/iiif?x=1", "--base-url must be an absolute"),
])
def test_serve_flag_out_of_range_is_refused(flag, value, message, tmp_path):
    """Through ``settings_from`` (what `serve` runs first), so a check that regressed fails here
    instead of starting a server."""
    args = cli.build_parser().parse_args(["serve", str(tmp_path), flag, value])
    with pytest.raises(UsageError) as refusal:
        serve.settings_from(args)
    assert str(refusal.value).startswith(message) and "\n" not in str(refusal.value)


def test_serve_cache_mb_nan_is_one_line(tmp_path, capsys):
    err = refused(capsys, "serve", str(tmp_path), "--cache-mb", "nan")  # was "must not be negative"
    assert err == "tileserver serve: error: --cache-mb must be a finite number >= 0 and <= 1048576, not nan\n"


@pytest.mark.parametrize("flags,expected", [
    (("--tile-size", "2048"), {"tile_size": 2048}),
    (("--threads", "0", "--http-threads", "512"), {"threads": 0, "http_threads": 512}),
    (("--base-url", "https://slides.example/iiif"), {"base_url": "https://slides.example/iiif"}),
    (("--cache-mb", "0", "--assume-mpp", "0.25"), {"cache_mb": 0.0, "assume_mpp": 0.25}),
])
def test_serve_flags_at_their_limits_are_taken(flags, expected, tmp_path):
    args = cli.build_parser().parse_args(["serve", str(tmp_path), *flags])
    assert serve.settings_from(args) == Settings(slide_dir=tmp_path, warm_up=True, **expected)


def test_serve_help_says_the_bounds(capsys):
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(px, 2..2048)" in text and "0..256" in text and "(2..512)" in text


def test_serve_a_file_says_it_is_a_file(good, capsys):
    err = refused(capsys, "serve", str(good))
    assert f"slide folder {good} is a file, not a folder" in err and f"({good.parent})" in err
    assert f"tileserver ingest {good}" in err


def test_redis_url_rules_unchanged_by_the_shared_url_check():
    assert check_redis_url("redis://127.0.0.1:6379/0") is None and check_redis_url("unix:///tmp/redis.sock") is None
    assert check_redis_url("notredis") == "--redis must be a redis://HOST:PORT/DB URL, not 'notredis'"
    assert check_redis_url("redis://host/x") == "--redis 'redis://host/x': the database must be a number"
    assert "Port out of range" in check_redis_url("redis://host:99999/0")


def test_out_of_range_never_converts_a_huge_int_to_float():
    assert out_of_range(10**400, 0, 256, integer=True) == f"must be 0..256, not {10**400}"


# ---- 6: ingest --workers; 11: unknown options --------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-1", "100000"])
def test_ingest_workers_out_of_range(value, good, tmp_path, capsys):
    line = usage_error(capsys, "ingest", str(good), "-o", str(tmp_path), "--workers", value)
    assert line == f"tileserver ingest: error: argument --workers: must be 1..64, not {value}"
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("command", [["serve"], ["ingest", "a.svs", "-o", "out"], ["demo"]])
def test_unknown_option_is_told_by_the_subcommand(command, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main([*command, "--bogus"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith(f"usage: tileserver {command[0]} ")
    assert err.splitlines()[-1] == f"tileserver {command[0]}: error: unrecognized arguments: --bogus"
