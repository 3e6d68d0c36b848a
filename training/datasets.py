"""What each data set is and under which licence, for model cards and bundle manifests.

Keyed by the first folder of a source's path below the data root
(``../shared/data``); facts from ``DATA.md`` and ``manifest-extra.csv``.
"""
from __future__ import annotations

from typing import Sequence

DATASETS = {
    "monuseg2018-train": {
        "title": "MoNuSeg 2018 training images (Kumar et al., IEEE TMI 2017): H&E 40X tiles of TCGA diagnostic slides",
        "licence": "CC BY-NC-SA 4.0", "url": "https://creativecommons.org/licenses/by-nc-sa/4.0/"},
    "monusac2020-test": {
        "title": "MoNuSAC 2020 test images (Verma et al., IEEE TMI 2021): H&E 40X, TCGA lung/kidney/breast/prostate",
        "licence": "CC BY-NC-SA 4.0", "url": "https://creativecommons.org/licenses/by-nc-sa/4.0/"},
    "camelyon16-patches": {
        "title": "CAMELYON16 level-0 patches (Bejnordi et al., JAMA 2017) via DIDSR/DeepLearningCamelyon_II: "
                 "sentinel lymph node, Radboud UMC (3DHistech P250) and UMC Utrecht (Hamamatsu NanoZoomer-XR)",
        "licence": "CC0 1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"},
    "cryonuseg-pilot": {
        "title": "CryoNuSeg pilot tiles (Mahbod et al. 2021): TCGA frozen sections",
        "licence": "not stated by its source (used for validation only, not redistributed)", "url": None},
}
NON_COMMERCIAL = "CC BY-NC-SA 4.0"


def dataset_of(path: str) -> dict:
    key = path.strip("/").split("/")[0]
    return DATASETS.get(key, {"title": path, "licence": "unknown", "url": None})


def model_licence(trained_on: Sequence[str]) -> dict:
    """The licence a model inherits from the data sets it was trained on (share-alike wins)."""
    licences = {dataset_of(p)["licence"] for p in trained_on}
    if NON_COMMERCIAL in licences:
        return {"name": f"{NON_COMMERCIAL} (inherited from its training data)", "url": DATASETS["monuseg2018-train"]["url"]}
    if licences == {"CC0 1.0"}:
        return {"name": "CC0 1.0", "url": DATASETS["camelyon16-patches"]["url"]}
    return {"name": "see training_data: " + ", ".join(sorted(licences)), "url": None}
