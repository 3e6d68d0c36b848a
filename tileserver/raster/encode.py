"""Encode pixels for the wire (Pillow): the one encoder of Deep Zoom tiles and IIIF images."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

PIL_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "tif": "TIFF", "gif": "GIF"}
MIMETYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "TIFF": "image/tiff", "GIF": "image/gif"}


def mimetype(fmt: str) -> str:
    return MIMETYPES[PIL_FORMATS[fmt]]


def encode(image: np.ndarray | Image.Image, fmt: str, quality: int) -> bytes:
    """An (h, w, 3) uint8 array or a Pillow image as ``fmt`` (jpg/jpeg, png, webp, tif, gif);
    ``quality`` applies to JPEG and WebP."""
    im = image if isinstance(image, Image.Image) else Image.fromarray(image)
    pil = PIL_FORMATS[fmt]
    options = {"JPEG": {"quality": quality}, "WEBP": {"quality": quality, "method": 4},
               "PNG": {"compress_level": 3}, "TIFF": {"compression": "tiff_deflate"}}.get(pil, {})
    buf = io.BytesIO()
    im.save(buf, format=pil, **options)
    return buf.getvalue()
