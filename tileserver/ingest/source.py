"""Reading a source slide for ingest: open it (or say in one line why not),
its mpp, its level-0 pixels as RGB, its associated images and its hash."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import openslide
from PIL import Image

from tileserver.ingest.writer import ASSOCIATED

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


class IngestError(Exception):
    """A problem with one source, told in one line; nothing was written."""


def slide_mpp(slide: openslide.OpenSlide, override: float | None) -> float:
    """The source's µm per pixel: ``override`` or the slide's own (refused if absent)."""
    if override is not None:
        return override
    props = slide.properties
    x, y = props.get(openslide.PROPERTY_NAME_MPP_X), props.get(openslide.PROPERTY_NAME_MPP_Y)
    if not x:
        power = props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)
        hint = f" (it says objective {power}X, which is not a pixel size)" if power else ""
        raise IngestError(f"the slide records no microns per pixel{hint}; give --source-mpp (e.g. 0.25 for 40X, 0.5 for 20X)")
    mx, my = float(x), float(y or x)
    if mx <= 0 or abs(mx - my) > 0.02 * mx:
        raise IngestError(f"non-square or invalid pixels ({mx:g} × {my:g} µm); give --source-mpp to override")
    return mx


def _background(slide: openslide.OpenSlide) -> tuple[int, int, int]:
    hexcolor = slide.properties.get(openslide.PROPERTY_NAME_BACKGROUND_COLOR, "FFFFFF")
    return tuple(int(hexcolor[i : i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]


def to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """An OpenSlide RGBA image as RGB, transparent parts (no data) filled with ``background``."""
    if img.mode == "RGBA" and img.getchannel("A").getextrema()[0] < 255:
        flat = Image.new("RGB", img.size, background)
        flat.paste(img, mask=img.getchannel("A"))
        img = flat
    return np.asarray(img.convert("RGB"))


def region_reader(slide: openslide.OpenSlide) -> Callable[[int, int, int, int], np.ndarray]:
    """A ``Reader`` of level-0 RGB regions of ``slide`` (thread-safe)."""
    background = _background(slide)

    def read(x: int, y: int, w: int, h: int) -> np.ndarray:
        return to_rgb(slide.read_region((x, y), 0, (w, h)), background)

    return read


def open_source(path: Path) -> openslide.OpenSlide:
    """Open ``path`` with OpenSlide, or raise IngestError saying why not."""
    if not path.exists():
        raise IngestError("no such file")
    if not path.is_file():
        raise IngestError("not a file")
    if path.stat().st_size == 0:
        raise IngestError("empty file (0 bytes)")
    with path.open("rb"):  # unreadable (permissions) → OSError with its reason
        pass
    try:
        return openslide.OpenSlide(path)
    except openslide.OpenSlideUnsupportedFormatError:
        with path.open("rb") as f:
            tiff = f.read(4) in TIFF_MAGIC
        raise IngestError(
            "corrupt or unsupported TIFF: OpenSlide cannot read it as a whole-slide image (truncated or damaged?)"
            if tiff else "unsupported format: not a whole-slide image that OpenSlide can read"
        ) from None
    except openslide.OpenSlideError as e:
        raise IngestError(f"corrupt or unreadable slide: {e}") from None


def associated_rgb(slide: openslide.OpenSlide) -> dict[str, np.ndarray]:
    """The thumbnail, label and macro images the source has, as RGB."""
    images = slide.associated_images
    return {name: to_rgb(images[name]) for name in ASSOCIATED if name in images}


def icc_profile(slide: openslide.OpenSlide) -> bytes | None:
    """The source's ICC colour profile, if it has one."""
    profile = slide.color_profile
    return profile.tobytes() if profile is not None else None
