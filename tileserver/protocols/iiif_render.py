"""Apply a resolved IIIF request to pixels read at the planned scale: resample,
mirror, rotate, quality (Pillow). The only IIIF module that touches pixels; the
tile service encodes the result."""
from __future__ import annotations

import numpy as np
from PIL import Image

from tileserver.protocols.iiif import ReadPlan, Resolved

TRANSPARENT_FORMATS = {"png", "webp", "tif", "gif"}
_QUARTER = {1: Image.Transpose.ROTATE_270, 2: Image.Transpose.ROTATE_180, 3: Image.Transpose.ROTATE_90}  # clockwise


def transform(pixels: np.ndarray, plan: ReadPlan, res: Resolved) -> Image.Image:
    """(h, w, 3) uint8 read at ``plan`` → the output image (size, then mirror, rotation, quality)."""
    im = Image.fromarray(pixels)
    req = res.request
    if not plan.exact:
        down = res.size[0] <= plan.crop[2] - plan.crop[0] and res.size[1] <= plan.crop[3] - plan.crop[1]
        im = im.resize(res.size, Image.Resampling.LANCZOS if down else Image.Resampling.BICUBIC, box=plan.crop)
    rot = req.rotation
    if rot.mirror:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    quarter = rot.right_angle
    if quarter:
        im = im.transpose(_QUARTER[quarter])
    elif quarter is None:  # arbitrary angle: the bounding box, transparent where the format allows
        if req.format in TRANSPARENT_FORMATS:
            im = im.convert("RGBA").rotate(-float(rot.degrees), Image.Resampling.BICUBIC, expand=True,
                                           fillcolor=(0, 0, 0, 0))
        else:
            im = im.rotate(-float(rot.degrees), Image.Resampling.BICUBIC, expand=True, fillcolor=(255, 255, 255))
    if req.quality in ("gray", "bitonal"):
        im = im.convert("LA" if im.mode == "RGBA" else "L")
        if req.quality == "bitonal":
            bands = im.split()
            bands = (bands[0].point(lambda v: 255 if v >= 128 else 0),) + bands[1:]
            im = Image.merge(im.mode, bands)
    return im

