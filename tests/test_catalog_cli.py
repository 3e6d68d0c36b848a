"""Catalog on real slides (skipped without ../shared/data), reference pairing, CLI errors."""
import shutil

import pytest

from tileserver.raster.catalog import Catalog, decide


def test_decide():
    assert decide(2.0, 2.0) is None and decide(1.6, 2.0) is None and decide(2.49, 2.0) is None
    assert "±25%" in decide(0.499, 2.0)
    assert "--assume-mpp" in decide(None, 2.0)
    assert "no super-resolution model" in decide(2.0, None)


@pytest.mark.parametrize("model_mpp", [2.0, 0.5, 1.0])
def test_mpp_rule_is_25_percent_of_the_model_mpp_both_ways(model_mpp):
    """Exactly ±25 % of the model's input mpp is accepted; just beyond, on either side, is not (default tolerance)."""
    for f in (0.75, 0.76, 1.0, 1.24, 1.25):
        assert decide(model_mpp * f, model_mpp) is None, f
    for f in (0.7499, 0.74, 0.6, 1.2501, 1.26, 1.33, 1.5, 2.0):
        reason = decide(model_mpp * f, model_mpp)
        assert reason and "not within ±25%" in reason, f
    assert decide(model_mpp * 1.1, model_mpp, tolerance=0.05) and decide(model_mpp * 1.1, model_mpp, tolerance=0.11) is None


def test_real_slides(wsi_dir, tmp_path):
    for f in wsi_dir.iterdir():
        shutil.copy(f, tmp_path / f.name)
    cat = Catalog(tmp_path, model_mpp=2.0)
    try:
        cmu = cat.get("CMU-1-Small-Region")[0]
        assert (cmu.size, cmu.mpp, cmu.synthesized) == ((2220, 2967), 0.499, False)
        tcga = cat.get("tcga-cr-7395-01a-01-ts1")[0]
        assert tcga.mpp is None and not tcga.synthesized and "no mpp" in tcga.reason
    finally:
        cat.close()
    cat = Catalog(tmp_path, model_mpp=2.0, assume_mpp=2.0)
    try:
        tcga = cat.get("tcga-cr-7395-01a-01-ts1")[0]
        assert tcga.synthesized and tcga.mpp_source == "assumed"
    finally:
        cat.close()


def test_ingested_slide_names_its_reference(cmu_svs, tmp_path, bundle):
    """`tileserver ingest` output pairs with its source in the API; any failure on the way fails the test."""
    from tileserver.commands import cli
    from tileserver.settings import Settings
    from tileserver.web.app import create_app

    shutil.copy(cmu_svs, tmp_path / "CMU-1-Small-Region.svs")
    assert cli.main(["ingest", str(tmp_path / "CMU-1-Small-Region.svs"), "-o", str(tmp_path), "--no-progress"]) == 0
    app = create_app(Settings(slide_dir=tmp_path, model=bundle, device="cpu"))
    try:
        slides = {s["id"]: s for s in app.test_client().get("/api/slides").json["slides"]}
        stored = [s for s in slides.values() if s["synthesized"]]
        assert [s["name"] for s in stored] == ["CMU-1-Small-Region.5x.tif"]
        assert stored[0]["reference"] == {"id": "CMU-1-Small-Region", "name": "CMU-1-Small-Region.svs",
                                          "magnification": "20X"}
        assert stored[0]["mpp"]["stored"] == pytest.approx(1.996, abs=0.01)
        assert slides["CMU-1-Small-Region"]["reference"] is None  # the source names no reference of its own
    finally:
        app.extensions["tileserver"].close()


def test_serve_cli_errors(tmp_path, capsys):
    from tileserver.commands import cli

    assert cli.main(["serve", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["serve", str(tmp_path), "--model", str(tmp_path / "nobundle")]) == 2
    assert "manifest.json is missing" in capsys.readouterr().err


def test_serve_port_taken_or_out_of_range_one_line_before_anything(tmp_path, capsys):
    import socket

    from tileserver.commands import cli

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["serve", str(tmp_path), "--port", str(port)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and f"127.0.0.1:{port}" in err and "in use" in err
    assert cli.main(["serve", str(tmp_path), "--port", "99999"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == "tileserver serve: error: --port must be 0..65535, not 99999\n"


def test_serve_flags_are_the_settings(tmp_path):
    """Every default is written once, in Settings: `serve` without flags is Settings() (warmed up)."""
    from tileserver.commands import cli, serve
    from tileserver.settings import Settings

    args = cli.build_parser().parse_args(["serve", str(tmp_path)])
    assert serve.settings_from(args) == Settings(slide_dir=tmp_path, warm_up=True)
    args = cli.build_parser().parse_args(["serve", str(tmp_path), "--queue", "3", "--max-side", "100"])
    assert serve.settings_from(args) == Settings(slide_dir=tmp_path, warm_up=True, queue_size=3, max_side=100)


def test_serve_help_shows_every_default(capsys):
    from tileserver.commands import cli

    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for needle in ("(default: 5000)", "(default: 254)", "(default: 1)", "(default: 90)", "(default: 24)",
                   "Deep Zoom tile overlap", "JPEG and WebP quality"):
        assert needle in text


def test_ingest_output_folder_that_cannot_be_written_is_named(tmp_path, capsys):
    from tileserver.commands import cli

    src = tmp_path / "a.svs"
    src.write_bytes(b"whatever")
    (tmp_path / "file").write_text("")
    for out in ("/proc/msr-tileserver-test", str(tmp_path / "file" / "sub")):
        assert cli.main(["ingest", "--no-progress", str(src), "-o", out]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"output folder {out}" in err and str(src) not in err


def test_catalog_of_a_folder(slide_dir, tmp_path):
    """The catalog alone (no model): which files are slides, their ids, sizes, mpp and the synthesis decision."""
    import os

    cat = Catalog(slide_dir, model_mpp=2.0)
    try:
        assert sorted(cat.ids()) == ["he20x", "he5x", "plain"]  # notes.txt is not a slide
        he5, _ = cat.get("he5x")
        assert (he5.name, he5.format, he5.mpp, he5.mpp_source, he5.synthesized, he5.reason) == (
            "he5x.tif", "generic-tiff", 2.0, "slide", True, None)
        st = os.stat(slide_dir / "he5x.tif")
        assert he5.stamp == f"he5x.tif:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}" and he5.mtime == st.st_mtime
        he20, _ = cat.get("he20x")
        assert he20.size == (320, 256) and not he20.synthesized and "not within ±25%" in he20.reason
        plain, raster = cat.get("plain")
        assert (plain.format, plain.size, plain.mpp, plain.mpp_source, plain.synthesized) == ("image", (70, 50), None, None, False)
        assert "no mpp" in plain.reason and raster.read(0, 0, 70, 50).shape == (50, 70, 3)
        assert cat.get("notes") is None and cat.reference_of(he5) is None
    finally:
        cat.close()
    assumed = Catalog(slide_dir, model_mpp=2.0, assume_mpp=2.0)
    try:
        plain = assumed.get("plain")[0]
        assert (plain.mpp, plain.mpp_source, plain.synthesized) == (2.0, "assumed", True)
        assert assumed.get("he20x")[0].mpp_source == "slide"  # a slide's own mpp wins over --assume-mpp
    finally:
        assumed.close()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Catalog(tmp_path / "absent", model_mpp=2.0)
    assert Catalog(slide_dir, model_mpp=None).get("he5x")[0].reason == "no super-resolution model loaded"


def test_slide_ids_and_mpp_properties():
    from tileserver.raster.catalog import magnification, read_mpp, slide_id

    assert slide_id("a b/c?.svs") == "c" and slide_id("Case 1 (HE).svs") == "Case_1_HE"
    assert slide_id("..svs") == "slide" and slide_id("x.5x.tif") == "x.5x"
    assert read_mpp({"openslide.mpp-x": "0.5", "openslide.mpp-y": "0.25"}) == 0.375
    assert read_mpp({"openslide.mpp-x": "0.5"}) == 0.5
    assert read_mpp({"openslide.mpp-x": "nan", "openslide.mpp-y": "-1"}) is None
    assert read_mpp({"openslide.mpp-x": "abc"}) is None and read_mpp({}) is None
    assert magnification(0.25) == 40.0 and magnification(0.499) == 20.0 and magnification(2.0) == 5.0
    assert magnification(0.33) == pytest.approx(10 / 0.33)  # no objective within 10 %


def _image(path, value: int) -> None:
    import numpy as np
    from PIL import Image

    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def test_every_slide_file_gets_an_id_of_its_own_and_clean_names_keep_theirs(tmp_path):
    """Names that only differ in what the URL-safe form replaces are different slides: none is skipped or
    served under another's id ("a b.tif" used to take "a_b" and "a_b.tif" was skipped), and a file whose
    name is URL-safe keeps its stem as id unless another slide file shares the stem."""
    from tileserver.raster.catalog import assign_ids

    names = ["a b.tif", "a?b.tif", "a_b.tif", "切片一.tif", "切片二.tif", "切片三.tif", "c.png", "c.tif",
             "a_b~" + assign_ids(["a b.tif"])["a b.tif"].split("~")[1] + ".png"]
    for k, name in enumerate(names):
        _image(tmp_path / name, 10 * k)
    cat = Catalog(tmp_path, model_mpp=2.0)
    try:
        ids = cat.ids()
        assert len(ids) == len(names) == len(set(ids))
        by_name = {cat.get(sid)[0].name: sid for sid in ids}
        assert set(by_name) == set(names) and by_name == assign_ids(names)
        assert by_name["a_b.tif"] == "a_b" and by_name["c.png"] == "c~png" and by_name["c.tif"] == "c~tif"
        assert by_name["a b.tif"].startswith("a_b~") and by_name["a?b.tif"].startswith("a_b~")
        assert all(by_name[n].startswith("slide~") for n in names if n.startswith("切"))
        for name, sid in by_name.items():  # each id serves its own file's pixels
            assert cat.read(sid, 0, 0, 1, 1)[0, 0, 0] == 10 * names.index(name)
    finally:
        cat.close()
    assert assign_ids(["x.5x.tif", "CMU-1-Small-Region.svs"]) == {"x.5x.tif": "x.5x",
                                                                  "CMU-1-Small-Region.svs": "CMU-1-Small-Region"}
    assert assign_ids(["\udcff\udcfe.svs"])["\udcff\udcfe.svs"].startswith("slide~")  # not UTF-8: still an id


def test_slide_ids_do_not_depend_on_the_order_files_arrived_in(tmp_path):
    """The folder's names decide the ids, so a restart or another replica gives the same: a slide file that
    arrives with another's stem makes both say their suffix, and when it goes the other gets its stem back."""
    _image(tmp_path / "late.tif", 10)
    cat = Catalog(tmp_path, model_mpp=2.0)
    cat.SCAN_EVERY = 0.0
    try:
        assert cat.ids() == ["late"]
        _image(tmp_path / "late.png", 20)
        assert sorted(cat.ids()) == ["late~png", "late~tif"] and cat.get("late") is None
        assert cat.get("late~tif")[0].id == "late~tif" and cat.read("late~tif", 0, 0, 1, 1)[0, 0, 0] == 10
        restarted = Catalog(tmp_path, model_mpp=2.0)
        assert sorted(restarted.ids()) == sorted(cat.ids())
        restarted.close()
        (tmp_path / "late.png").unlink()
        assert cat.get("late~png") is None and cat.get("late")[0].name == "late.tif"
        assert cat.ids() == ["late"] and cat.read("late", 0, 0, 1, 1)[0, 0, 0] == 10
    finally:
        cat.close()


def test_a_file_named_like_a_slide_that_is_none_is_a_failed_slide_and_other_files_are_ignored(tmp_path):
    """A text file renamed .svs is listed with its reason (the user put it there as a slide); a README is not."""
    (tmp_path / "bad.svs").write_text("not a slide\n")
    (tmp_path / "README.txt").write_text("notes\n")
    cat = Catalog(tmp_path, model_mpp=2.0)
    try:
        assert cat.ids() == ["bad"]
        health = cat.health()["bad"]
        assert health["status"] == "failed" and "not a slide OpenSlide or Pillow can read" in health["error"]
    finally:
        cat.close()
    (tmp_path / "bad.svs").unlink()
    (tmp_path / "fake.tif").write_text("not a TIFF\n")  # Pillow's reason names the file by its whole path
    cat = Catalog(tmp_path, model_mpp=2.0)
    try:
        error = cat.health()["fake"]["error"]
        assert "fake.tif" in error and str(tmp_path) not in error, error
    finally:
        cat.close()
