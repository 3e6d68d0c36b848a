"""Bad input to training/train.py and benchmarks/training_batches.py: exit 2 with one line naming the
file or setting, and a run folder left exactly as it was (issue: the QA pass of the training CLI)."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.config import ConfigError, load
from training.train import main, train
from test_train import SMOKE, synthetic_tiles

FAST = ["--set", "data.val_count=1", "--set", "run.epochs=1", "--set", "run.steps_per_epoch=1"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(capsys, argv: list[str], *words: str) -> str:
    """Run train.py with ``argv``: exit 2, one line on stderr holding every one of ``words``."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(w in err for w in words), err
    return err


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    """(tiles, a finished two-step run folder with last.pt, best.pt and log.csv)."""
    root = tmp_path_factory.mktemp("run")
    tiles = synthetic_tiles(root / "tiles")
    train(load(SMOKE, ["data.val_count=1", "run.epochs=1", "run.steps_per_epoch=2"]), tiles, root / "run", progress=False)
    return tiles, root / "run"


def test_the_config_is_required(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "--config" in capsys.readouterr().err


@pytest.mark.parametrize("extra, words", [
    (["--resume", "{run}/last.pt", "--set", "model.features=16"], ["last.pt", "model.features 8 there, 16 here"]),
    (["--resume", "{run}/best.pt"], ["best.pt", "no optimiser state"]),
    (["--resume", "{run}/last.pt", "--set", "loss.adversarial=0.1", "--set", "loss.disc_width=8"],
     ["without a discriminator"]),
    (["--resume", "{run}/last.pt", "--set", "optim.train_stages=[1]"], ["cannot be resumed"]),
    (["--resume", "{run}/log.csv"], ["log.csv", "not an MSR checkpoint"]),
    (["--init", "{run}/curves.png"], ["curves.png", "not an MSR checkpoint"]),
    (["--resume", "{run}/truncated.pt"], ["truncated.pt", "not an MSR checkpoint"]),
    (["--data", "{run}/../empty"], ["no 40X tiles", "empty"]),
])
def test_a_failed_start_leaves_the_run_folder_as_it_was(run, capsys, tmp_path, extra, words):
    tiles, folder = run
    (folder / "truncated.pt").write_bytes((folder / "last.pt").read_bytes()[:5000])
    (folder.parent / "empty").mkdir(exist_ok=True)
    before = snapshot(folder)
    argv = ["--config", SMOKE, "--data", str(tiles), "--out", str(folder), *FAST]
    refused(capsys, argv + [a.format(run=folder) for a in extra], *words)
    assert snapshot(folder) == before
    refused(capsys, ["--config", SMOKE, "--data", str(tiles), "--out", str(tmp_path / "new"), *FAST]
            + [a.format(run=folder) for a in extra], *words)
    assert not (tmp_path / "new").exists()


def test_an_out_that_cannot_be_a_folder(run, capsys, tmp_path):
    tiles, _ = run
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file", tmp_path / "file" / "sub"):
        refused(capsys, ["--config", SMOKE, "--data", str(tiles), "--out", str(out), *FAST],
                "cannot write the run folder", str(out))


@pytest.mark.parametrize("override, words", [
    ("data.batch=abc", "data.batch must be an integer, not 'abc'"),
    ("data.batch=0", "data.batch must be at least 1, not 0"),
    ("data.batch=-1", "data.batch must be at least 1"),
    ("data.crop=0", "data.crop must be at least 1"),
    ("run.epochs=0", "run.epochs must be at least 1"),
    ("run.steps_per_epoch=-3", "run.steps_per_epoch must be at least 1"),
    ("model.features=eight", "model.features must be an integer or a list of integers, not 'eight'"),
    ("data.batch=[1", "override 'data.batch=[1': its value is not YAML (line 1, column 3"),
    ("name.x=1", "name is a setting, not a group of them"),
    ("data.sources=[1]", "data.sources must be a list of mappings"),
    ("data.sources=[{name: a, path: ., weight: x}]", "data source a: weight must be a number, not 'x'"),
    ("run.max_minutes=nan", "run.max_minutes must be a finite number"),
])
def test_wrong_types_and_ranges_name_the_setting(run, capsys, tmp_path, override, words):
    tiles, _ = run
    refused(capsys, ["--config", SMOKE, "--data", str(tiles), "--out", str(tmp_path / "o"), "--set", override], words)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("minutes, words", [("nan", "finite number, not nan"), ("inf", "finite number, not inf"),
                                            ("-1", "must be a finite number > 0, not -1"), ("0", "> 0, not 0")])
def test_max_minutes_must_be_a_positive_number(run, capsys, tmp_path, minutes, words):
    tiles, _ = run
    refused(capsys, ["--config", SMOKE, "--data", str(tiles), "--out", str(tmp_path / "o"), "--max-minutes", minutes],
            "run.max_minutes", words)


def test_a_small_max_minutes_is_a_number_not_text(run, tmp_path):
    tiles, _ = run
    assert main(["--config", SMOKE, "--data", str(tiles), "--out", str(tmp_path / "o"), *FAST, "--max-minutes", "1e-5"]) == 0
    assert (tmp_path / "o" / "best.pt").is_file()


@pytest.mark.parametrize("text, words", [
    ("- a\n- b\n", ["list.yaml", "the top level must be a mapping of settings, not a list"]),
    ("data:\n  batch: [1\nrun: {}\n", ["list.yaml", "not valid YAML (line 3, column 4"]),
    ("data:\n  batch: two\n", ["data.batch must be an integer, not 'two'"]),
])
def test_config_files_that_are_not_settings(run, capsys, tmp_path, text, words):
    tiles, _ = run
    (tmp_path / "list.yaml").write_text(text)
    refused(capsys, ["--config", str(tmp_path / "list.yaml"), "--data", str(tiles), "--out", str(tmp_path / "o")], *words)


def test_one_validation_patient_may_be_a_string():
    assert load(SMOKE, ["data.val_patients=TCGA-18-5592"]).data.val_patients == ["TCGA-18-5592"]


def test_bad_images_are_refused_by_name(capsys, tmp_path):
    tiles = synthetic_tiles(tmp_path / "tiles")
    good = (tiles / "TCGA-AA-0000-01Z.png")
    Image.open(good).save(tiles / "TCGA-AA-0003-01Z.tif")
    data = (tiles / "TCGA-AA-0003-01Z.tif").read_bytes()
    (tiles / "TCGA-AA-0003-01Z.tif").write_bytes(data[:len(data) // 2])
    refused(capsys, ["--config", SMOKE, "--data", str(tiles), "--out", str(tmp_path / "o"), *FAST],
            "TCGA-AA-0003-01Z.tif: not a readable image", "truncated")
    (tiles / "TCGA-AA-0003-01Z.tif").write_text("not an image")
    refused(capsys, ["--config", SMOKE, "--data", str(tiles), "--out", str(tmp_path / "o"), *FAST],
            "TCGA-AA-0003-01Z.tif: not a readable image")
    assert not (tmp_path / "o").exists()


def test_a_folder_without_images_says_so(capsys, tmp_path):
    (tmp_path / "d").mkdir()
    for name in ("a.tif", "b.png"):
        (tmp_path / "d" / name).write_text("text")
    refused(capsys, ["--config", SMOKE, "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o")],
            f"no images found in {tmp_path / 'd'}")


def test_the_validation_split_taking_everything_says_so(capsys, tmp_path):
    tiles = synthetic_tiles(tmp_path / "tiles", n=1)
    refused(capsys, ["--config", SMOKE, "--data", str(tiles), "--out", str(tmp_path / "o")],
            "no training images left", "validation split")


def bench():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "training_batches.py"
    spec = importlib.util.spec_from_file_location("training_batches", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("flag", ["--steps", "--rounds", "--depth"])
def test_the_batches_benchmark_refuses_zero_counts(tmp_path, capsys, flag):
    with pytest.raises(SystemExit) as e:
        bench().main(["--data", str(tmp_path), "--config", SMOKE, "--device", "cpu", flag, "0"])
    assert e.value.code == 2 and "must be at least 1, not 0" in capsys.readouterr().err


@pytest.mark.parametrize("text, words", [("- a\n", "top level must be a mapping"),
                                         ("data:\n  batch: two\n", "data.batch must be an integer")])
def test_the_batches_benchmark_checks_the_config(tmp_path, capsys, text, words):
    (tmp_path / "c.yaml").write_text(text)
    assert bench().main(["--data", str(tmp_path), "--config", str(tmp_path / "c.yaml"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err


def test_config_errors_are_value_errors_with_the_key():
    with pytest.raises(ConfigError, match=r"optim.betas must be a list of 2 numbers"):
        load(SMOKE, ["optim.betas=[1]"])
    assert load(SMOKE, [("run.max_minutes", 1e-5)]).run.max_minutes == pytest.approx(1e-5)
    assert np.isclose(load(SMOKE, ["optim.lr=1e-3"]).optim.lr, 1e-3)
