"""benchmarks/gpu.py, the prepared accelerator benchmark: block sizes as served, and it says which device ran."""
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu  # noqa: E402


def test_block_inputs_are_the_served_share_of_a_tile_plus_the_halo():
    assert gpu.stage_inputs([8, 8, 4]) == [32 + 16, 64 + 16, 128 + 8]


def test_measures_a_shipped_bundle_and_names_the_device(capsys):
    lite = ROOT / "tileserver" / "models" / "msr-lite"
    assert gpu.main(["--device", "cpu", "--models", str(lite), "--batches", "2", "--precisions", "fp32",
                     "--seconds", "0.05"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("device: CPU") and "asked for the CPU" in out
    row = next(line for line in out.splitlines() if line.startswith("msr-lite"))
    assert float(row.split()[-1]) > 0  # 40X tiles per second


def test_a_network_from_a_config_and_its_training_step(capsys):
    smoke = ROOT / "training" / "configs" / "smoke.yaml"
    assert gpu.main(["--device", "cpu", "--models", "--configs", str(smoke), "--batches", "1", "--precisions", "fp32",
                     "--seconds", "0.05", "--train"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("smoke "))
    assert "[64, 96, 160]" in row and float(row.split()[-1]) > 0  # 16 px halos; 40X tiles per second
    step = next(line for line in out.splitlines() if line.startswith("smoke: one training step"))
    assert "batch 2 of 16 px" in step and float(step.split(" = ")[1].split()[0]) > 0  # smoke.yaml's batch and crop


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_asking_for_cuda_without_it_exits_2(capsys):
    assert gpu.main(["--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
