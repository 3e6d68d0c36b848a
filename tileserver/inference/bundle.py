"""Model bundles: a folder with ``manifest.json`` and one ONNX graph per ×2 stage
(made by ``export_onnx.py``). ``load_bundle`` checks the manifest and the sha256
of every stage and refuses a bundle that does not match; a ``Bundle`` answers
what the server needs to know: its id, stages, input mpp and halos."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from tileserver.files import sha256_file

BUNDLE_FORMAT = "msr-bundle/1"
STAGES = 3  # 5X → 10X → 20X → 40X
DEFAULT_BUNDLE = Path(__file__).resolve().parents[1] / "models" / "msr-lite"


class BundleError(RuntimeError):
    """A model bundle that is missing, malformed or fails its hash check."""


@dataclasses.dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def model_id(self) -> str:
        """``name@version``: what the X-SR-Model header and the badge show."""
        return f"{self.name}@{self.version}"

    @property
    def input_mpp(self) -> float:
        return float(self.manifest["input_mpp"])

    @property
    def halo(self) -> int:
        return int(self.manifest["halo"])

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def stages(self) -> int:
        """The number of ×2 stages: synthesized planes above the stored one."""
        return len(self.manifest["stages"])

    @property
    def magnification(self) -> float:
        """Objective power of the model's input (10 µm / input mpp: 5 for 2.0 µm/px)."""
        return 10.0 / self.input_mpp

    @property
    def modified(self) -> float:
        """When the manifest last changed (its mtime)."""
        return (self.path / "manifest.json").stat().st_mtime

    def stage_halo(self, stage: int) -> int:
        """Halo (input px per side) of one stage: measured per stage when the manifest has it."""
        per = (self.manifest.get("halo_measurement") or {}).get("per_stage_halo")
        return int(per[stage]) if per and len(per) == self.stages else self.halo

    def stage_alignment(self, stage: int) -> int:
        """Windows given to the stage must start on a multiple of this (input pixels; 1 = anywhere): a stage
        that back-projects to 5X subsamples its input on the 5X grid."""
        return int(self.manifest["stages"][stage].get("input_alignment", 1))

    @property
    def stage_files(self) -> list[Path]:
        return [self.path / s["file"] for s in self.manifest["stages"]]


def load_bundle(path: Path | str | None = None, verify: bool = True) -> Bundle:
    """Read and check ``manifest.json``; with ``verify`` every stage's sha256 must match."""
    path = Path(path) if path is not None else DEFAULT_BUNDLE
    mf = path / "manifest.json"
    if not mf.is_file():
        hint = " (the default bundle is made by `python export_onnx.py CHECKPOINT -o tileserver/models/msr-lite`)" if path == DEFAULT_BUNDLE else ""
        raise BundleError(f"no model bundle at {path}: {mf.name} is missing{hint}")
    try:
        manifest = json.loads(mf.read_text())
    except (OSError, ValueError) as e:
        raise BundleError(f"{mf}: unreadable manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{mf}: not an {BUNDLE_FORMAT} manifest")
    problem = manifest_problem(manifest)
    if problem:
        raise BundleError(f"{mf}: {problem}")
    bundle = Bundle(path, manifest)
    for stage in manifest["stages"]:
        f = path / stage["file"]
        if not f.is_file():
            raise BundleError(f"{path / stage['file']}: stage file is missing")
        if verify and sha256_file(f) != stage["sha256"]:
            raise BundleError(f"{f}: does not match the sha256 in the manifest; refusing to load it")
    return bundle


def manifest_problem(m: dict[str, Any]) -> str | None:
    """The first thing wrong with a manifest's fields, in one line, or None."""
    for key in ("name", "version", "stages", "input_mpp", "halo"):
        if key not in m:
            return f"field {key!r} is missing"
    stages = m["stages"]
    if not isinstance(stages, list) or len(stages) != STAGES:
        n = len(stages) if isinstance(stages, list) else repr(stages)
        return f"'stages' must list {STAGES} x2 stages (5X to 10X, 20X, 40X), not {n}"
    for i, st in enumerate(stages):
        if not (isinstance(st, dict) and isinstance(st.get("file"), str) and isinstance(st.get("sha256"), str)):
            return f"stage {i + 1} needs a 'file' and a 'sha256'"
        if Path(st["file"]).is_absolute() or ".." in Path(st["file"]).parts:
            return f"stage {i + 1}: file {st['file']!r} must lie inside the bundle"
        a = st.get("input_alignment", 1)
        if not isinstance(a, int) or isinstance(a, bool) or a < 1 or a & (a - 1):
            return f"stage {i + 1}: 'input_alignment' must be a power of two, not {a!r}"
    num = (int, float)
    if not isinstance(m["input_mpp"], num) or isinstance(m["input_mpp"], bool) or not m["input_mpp"] > 0:
        return f"'input_mpp' must be a positive number, not {m['input_mpp']!r}"
    if not isinstance(m["halo"], int) or isinstance(m["halo"], bool) or m["halo"] < 0:
        return f"'halo' must be a whole number of pixels >= 0, not {m['halo']!r}"
    per = (m.get("halo_measurement") or {}).get("per_stage_halo") if isinstance(m.get("halo_measurement"), dict) else None
    if per is not None and not (isinstance(per, list) and all(isinstance(h, int) and h >= 0 for h in per)):
        return f"'halo_measurement.per_stage_halo' must list whole numbers >= 0, not {per!r}"
    return None
