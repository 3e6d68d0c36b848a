"""setup.cfg's ONNX Runtime requirement: exactly one build on every platform, by environment markers
(the CUDA build where PyPI has its wheels, the CPU build elsewhere, e.g. macOS)."""
from __future__ import annotations

import configparser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

SETUP = Path(__file__).resolve().parents[1] / "setup.cfg"
PLATFORMS = {  # (sys_platform, platform_machine): the build pip should pick
    ("linux", "x86_64"): "onnxruntime-gpu",
    ("win32", "AMD64"): "onnxruntime-gpu",
    ("linux", "aarch64"): "onnxruntime",
    ("darwin", "arm64"): "onnxruntime",
    ("darwin", "x86_64"): "onnxruntime",
    ("win32", "ARM64"): "onnxruntime",
}


def runtime_requirements() -> list[Requirement]:
    cfg = configparser.ConfigParser()
    cfg.read(SETUP)
    return [Requirement(line) for line in cfg["options"]["install_requires"].split("\n") if line.strip()]


@pytest.mark.parametrize("platform,machine", PLATFORMS)
def test_one_onnxruntime_per_platform(platform, machine):
    env = {"sys_platform": platform, "platform_machine": machine}
    picked = [r.name for r in runtime_requirements() if r.name.startswith("onnxruntime")
              and (r.marker is None or r.marker.evaluate(env))]
    assert picked == [PLATFORMS[(platform, machine)]]


def test_this_machine_has_exactly_one_onnxruntime_and_it_runs_on_cpu():
    from importlib import metadata

    import onnxruntime as ort

    installed = [d for d in ("onnxruntime", "onnxruntime-gpu") if _installed(metadata, d)]
    assert len(installed) == 1, installed
    assert "CPUExecutionProvider" in ort.get_available_providers()


def _installed(metadata, name: str) -> bool:
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False
