"""Shared fixtures: where the real data lives, and skips that say why."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MONUSEG = SHARED_DATA / "monuseg2018-train"
WSI = SHARED_DATA / "wsi"


@pytest.fixture(scope="session")
def monuseg() -> Path:
    if not MONUSEG.is_dir():
        pytest.skip(f"real H&E tiles not found at {MONUSEG} (../shared/data is absent on this machine)")
    return MONUSEG


@pytest.fixture(scope="session")
def wsi_dir() -> Path:
    if not WSI.is_dir():
        pytest.skip(f"real slides not found at {WSI} (../shared/data is absent on this machine)")
    return WSI
