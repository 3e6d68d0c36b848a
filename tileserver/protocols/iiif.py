"""IIIF Image API 3.0 and 2.1: parse → resolve → plan. Pure: no pixels, no I/O.

``parse_request`` turns the four path segments of an image request into an
immutable ``ImageRequest`` (every value has a normalized ``str``, so
``parse(str(v)) == v``); ``resolve`` applies it to an image of a given size and
the server's limits, giving the region and output size in pixels
(``Resolved``, with the request's canonical form); ``read_plan`` says which
scale factor (a power of two; 1 = the full, 40X image) to read and where.
Every refusal is an ``IIIFError`` carrying its HTTP status and the offending
parameter. Numbers are ``Decimal`` so percentages round exactly (half up).
"""
from __future__ import annotations

import dataclasses
import math
import re
from decimal import ROUND_HALF_UP, Decimal

from tileserver.errors import RequestError, echo

VERSIONS = ("2", "3")
QUALITIES = ("default", "color", "gray", "bitonal")
FORMATS = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp", "tif": "image/tiff", "gif": "image/gif"}
KNOWN_FORMATS = set(FORMATS) | {"jp2", "pdf"}  # valid IIIF formats; the last two are not implemented (501)
_INT = r"(?:0|[1-9][0-9]{0,8})"
_NUM = r"(?:[0-9]{1,9}(?:\.[0-9]{1,9})?|\.[0-9]{1,9})"
_REGION_PX = re.compile(rf"({_INT}),({_INT}),({_INT}),({_INT})")
_REGION_PCT = re.compile(rf"pct:({_NUM}),({_NUM}),({_NUM}),({_NUM})")
_SIZE_WH = re.compile(rf"(!)?({_INT})?,({_INT})?")
_SIZE_PCT = re.compile(rf"pct:({_NUM})")
_ROTATION = re.compile(rf"(!)?({_NUM})")
_QF = re.compile(r"([a-z]+)\.([A-Za-z0-9]{1,8})")


class IIIFError(RequestError):
    """A request refused with the status the IIIF specification gives it, naming the parameter at fault."""

    def __init__(self, status: int, reason: str, parameter: str | None = None):
        super().__init__(reason, parameter)
        self.status = status


def num(d: Decimal) -> str:
    """A decimal without exponent or trailing zeros: 41.60 → 41.6, 90.0 → 90."""
    s = format(d.normalize(), "f")
    return s.rstrip("0").rstrip(".") if "." in s else s


def round_half_up(d: Decimal) -> int:
    return int(d.quantize(Decimal(1), rounding=ROUND_HALF_UP))


# -- values --------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RegionSpec:
    kind: str  # "full", "square", "px" or "pct"
    values: tuple[Decimal, ...] = ()

    def __str__(self) -> str:
        if self.kind in ("full", "square"):
            return self.kind
        body = ",".join(num(v) for v in self.values)
        return f"pct:{body}" if self.kind == "pct" else body


@dataclasses.dataclass(frozen=True)
class SizeSpec:
    kind: str  # "max", "full" (2.x), "w," ",h" "w,h" "!w,h" or "pct"
    w: int | None = None
    h: int | None = None
    pct: Decimal | None = None
    upscale: bool = False  # the 3.0 ^ prefix

    def __str__(self) -> str:
        up = "^" if self.upscale else ""
        if self.kind in ("max", "full"):
            return up + self.kind
        if self.kind == "pct":
            return f"{up}pct:{num(self.pct)}"
        w = "" if self.w is None else str(self.w)
        h = "" if self.h is None else str(self.h)
        return f"{up}{'!' if self.kind == '!w,h' else ''}{w},{h}"


@dataclasses.dataclass(frozen=True)
class RotationSpec:
    degrees: Decimal
    mirror: bool = False

    def __str__(self) -> str:
        return ("!" if self.mirror else "") + num(self.degrees)

    @property
    def right_angle(self) -> int | None:
        """Quarter turns (0-3) when the angle is a multiple of 90, else None."""
        q, r = divmod(self.degrees, 90)
        return int(q) % 4 if r == 0 else None


@dataclasses.dataclass(frozen=True)
class ImageRequest:
    version: str  # "2" or "3"
    region: RegionSpec
    size: SizeSpec
    rotation: RotationSpec
    quality: str
    format: str

    def __str__(self) -> str:
        return f"{self.region}/{self.size}/{self.rotation}/{self.quality}.{self.format}"


@dataclasses.dataclass(frozen=True)
class Limits:
    max_width: int
    max_height: int
    max_area: int

    def check(self, w: int, h: int, region: tuple[int, int] | None = None, version: str = "3") -> None:
        """400 over the limits, naming the largest size allowed at this aspect ratio and sizes of this
        ``version`` that give it for a ``region`` (width, height): with ``^`` in 3.0 when they upscale it."""
        if w > self.max_width or h > self.max_height or w * h > self.max_area:
            fw, fh = self.fit(w, h)
            if region is None or (fw <= region[0] and fh <= region[1]):
                hint = f"{fw},{fh} or max"
            else:  # upscaling: 3.0 says so with ^; 2.1's max and full never upscale
                hint = f"^{fw},{fh} or ^max" if version == "3" else f"{fw},{fh}"
            raise IIIFError(400, f"{w}x{h} exceeds the limits (maxWidth {self.max_width}, maxHeight "
                                 f"{self.max_height}, maxArea {self.max_area}); the largest allowed at this "
                                 f"aspect ratio is {fw}x{fh} (size {hint})", "size")

    def fit(self, w: int, h: int) -> tuple[int, int]:
        """The largest size with the aspect ratio of w×h (rounded) within the limits, up or down."""
        s = min(self.max_width / w, self.max_height / h, math.sqrt(self.max_area / (w * h)))
        ow = max(1, min(self.max_width, math.floor(w * s + 0.5)))
        oh = max(1, min(self.max_height, math.floor(h * s + 0.5)))
        while ow * oh > self.max_area and (ow > 1 or oh > 1):  # rounding up at the edge of maxArea
            ow, oh = (ow - 1, oh) if ow * h >= oh * w else (ow, oh - 1)
        return ow, oh


# -- parse ---------------------------------------------------------------------
def _version(version: str) -> str:
    if version not in VERSIONS:
        raise IIIFError(404, f"unknown IIIF Image API version {echo(version)}")
    return version


def parse_region(text: str) -> RegionSpec:
    if text in ("full", "square"):
        return RegionSpec(text)
    m = _REGION_PX.fullmatch(text) or _REGION_PCT.fullmatch(text)
    if not m:
        raise IIIFError(400, f"malformed region {echo(text)} (full, square, x,y,w,h or pct:x,y,w,h)", "region")
    kind = "pct" if text.startswith("pct:") else "px"
    values = tuple(Decimal(g) for g in m.groups())
    if kind == "pct" and any(v > 100 for v in values):
        raise IIIFError(400, f"percentages above 100 in {echo(text)}", "region")
    return RegionSpec(kind, values)


def parse_size(text: str, version: str) -> SizeSpec:
    version = _version(version)
    upscale = version == "3" and text.startswith("^")
    body = text[1:] if upscale else text
    if body == "max" or (body == "full" and version == "2"):
        return SizeSpec(body, upscale=upscale)
    if body == "full":
        raise IIIFError(400, "size 'full' was replaced by 'max' in IIIF 3.0", "size")
    m = _SIZE_PCT.fullmatch(body)
    if m:
        return SizeSpec("pct", pct=Decimal(m.group(1)), upscale=upscale)
    m = _SIZE_WH.fullmatch(body)
    if m and (m.group(2) or m.group(3)) and not (m.group(1) and not (m.group(2) and m.group(3))):
        bang, w, h = m.groups()
        kind = "!w,h" if bang else "w,h" if w and h else "w," if w else ",h"
        return SizeSpec(kind, int(w) if w else None, int(h) if h else None, upscale=upscale)
    forms = "max, w,, ,h, w,h, !w,h, pct:n (each with ^ to allow upscaling)" if version == "3" else \
        "full, max, w,, ,h, w,h, !w,h, pct:n"
    raise IIIFError(400, f"malformed size {echo(text)} ({forms})", "size")


def parse_rotation(text: str) -> RotationSpec:
    m = _ROTATION.fullmatch(text)
    if not m or Decimal(m.group(2)) > 360:
        raise IIIFError(400, f"malformed rotation {echo(text)} (0 to 360, ! to mirror)", "rotation")
    return RotationSpec(Decimal(m.group(2)), bool(m.group(1)))


def parse_quality_format(text: str, defer_unimplemented: bool = False) -> tuple[str, str]:
    m = _QF.fullmatch(text)
    if not m:
        raise IIIFError(400, f"malformed quality.format {echo(text)}", "quality")
    quality, fmt = m.group(1), m.group(2)
    if quality not in QUALITIES:
        raise IIIFError(400, f"unknown quality {echo(quality)} ({', '.join(QUALITIES)})", "quality")
    if fmt not in KNOWN_FORMATS:
        raise IIIFError(400, f"unknown format {echo(fmt)} ({', '.join(FORMATS)})", "format")
    if not defer_unimplemented:
        check_implemented(fmt)
    return quality, fmt


def check_implemented(fmt: str) -> None:
    """501 for a valid IIIF format this server does not make (jp2, pdf)."""
    if fmt not in FORMATS:
        raise IIIFError(501, f"format {fmt!r} is not implemented here ({', '.join(FORMATS)})", "format")


def parse_request(version: str, region: str, size: str, rotation: str, quality_format: str,
                  defer_unimplemented: bool = False) -> ImageRequest:
    """The request's value; any malformed part is a 400 before a 501 for a format not made here (which
    ``defer_unimplemented`` leaves to ``check_implemented``, after the request is resolved)."""
    version = _version(version)
    reg, size_, rot = parse_region(region), parse_size(size, version), parse_rotation(rotation)
    q, f = parse_quality_format(quality_format, defer_unimplemented)
    return ImageRequest(version, reg, size_, rot, q, f)


# -- resolve -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Resolved:
    """A request applied to a width×height image: region and output size in pixels."""

    request: ImageRequest
    width: int
    height: int
    region: tuple[int, int, int, int]  # x, y, w, h on the full image
    size: tuple[int, int]  # output width, height before rotation

    @property
    def full(self) -> bool:
        return self.region == (0, 0, self.width, self.height)

    @property
    def upscaled(self) -> bool:
        return self.size[0] > self.region[2] or self.size[1] > self.region[3]

    def canonical(self, limits: Limits) -> str:
        """The canonical ``region/size/rotation/quality.format`` of this version."""
        r = self.request
        region = "full" if self.full else ",".join(map(str, self.region))
        w, h = self.size
        rw, rh = self.region[2:]
        if r.version == "3":
            natural = limits.fit(rw, rh) if not _fits(limits, rw, rh) else (rw, rh)
            size = "max" if (w, h) == natural else f"{'^' if self.upscaled else ''}{w},{h}"
        else:
            size = "full" if (w, h) == (rw, rh) else f"{w}," if _scaled_h(rw, rh, w) == h else f"{w},{h}"
        return f"{region}/{size}/{r.rotation}/{r.quality}.{r.format}"


def _fits(limits: Limits, w: int, h: int) -> bool:
    return w <= limits.max_width and h <= limits.max_height and w * h <= limits.max_area


def _scaled_h(rw: int, rh: int, w: int) -> int:
    return round_half_up(Decimal(rh) * w / rw)


def _scaled_w(rw: int, rh: int, h: int) -> int:
    return round_half_up(Decimal(rw) * h / rh)


def resolve_region(region: RegionSpec, width: int, height: int) -> tuple[int, int, int, int]:
    if region.kind == "full":
        return 0, 0, width, height
    if region.kind == "square":
        s = min(width, height)
        return (width - s) // 2, (height - s) // 2, s, s
    if region.kind == "px":
        x, y, w, h = (int(v) for v in region.values)
    else:
        px, py, pw, ph = region.values
        x, y = round_half_up(px * width / 100), round_half_up(py * height / 100)
        w, h = round_half_up(pw * width / 100), round_half_up(ph * height / 100)
    if w == 0 or h == 0:
        raise IIIFError(400, f"region {region} has zero width or height", "region")
    if x >= width or y >= height:
        raise IIIFError(400, f"region {region} lies outside the {width}x{height} image", "region")
    return x, y, min(w, width - x), min(h, height - y)


def resolve_size(size: SizeSpec, version: str, rw: int, rh: int, limits: Limits) -> tuple[int, int]:
    """Output size for a rw×rh region. 3.0: upscaling only with ^ (the validator also holds ``!w,h`` to this);
    2.x allows it (sizeAboveFull). Always within the limits, else 400."""
    up = size.upscale or version == "2"
    if size.kind == "max":
        w, h = (rw, rh) if _fits(limits, rw, rh) and not size.upscale else limits.fit(rw, rh)
        if not size.upscale:
            w, h = min(w, rw), min(h, rh)
    elif size.kind == "full":
        w, h = rw, rh
    elif size.kind == "pct":
        w, h = round_half_up(size.pct * rw / 100), round_half_up(size.pct * rh / 100)
    elif size.kind == "w,":
        w, h = size.w, _scaled_h(rw, rh, size.w)
    elif size.kind == ",h":
        w, h = _scaled_w(rw, rh, size.h), size.h
    elif size.kind == "w,h":
        w, h = size.w, size.h
    else:  # !w,h: the largest size with the region's aspect ratio inside w×h
        if size.w == 0 or size.h == 0:
            raise IIIFError(400, f"size {size} is zero", "size")
        if Decimal(size.w) / rw <= Decimal(size.h) / rh:
            w, h = size.w, min(size.h, _scaled_h(rw, rh, size.w))
        else:
            w, h = min(size.w, _scaled_w(rw, rh, size.h)), size.h
    if w < 1 or h < 1:
        raise IIIFError(400, f"size {size} of a {rw}x{rh} region is zero", "size")
    if not up and (w > rw or h > rh):
        raise IIIFError(400, f"size {size} ({w}x{h}) would upscale the {rw}x{rh} region; "
                             f"IIIF 3.0 needs ^ for that (^{size})", "size")
    limits.check(w, h, (rw, rh), version)
    return w, h


def resolve(req: ImageRequest, width: int, height: int, limits: Limits) -> Resolved:
    x, y, rw, rh = resolve_region(req.region, width, height)
    return Resolved(req, width, height, (x, y, rw, rh), resolve_size(req.size, req.version, rw, rh, limits))


# -- plan ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ReadPlan:
    """Read ``box`` = (x0, y0, x1, y1) at scale factor 2**k, then resample ``crop`` (floats, relative to
    the box) to the output size; ``exact`` when the box already is the output (no resampling)."""

    k: int
    box: tuple[int, int, int, int]
    crop: tuple[float, float, float, float]
    exact: bool


def render_cost(res: Resolved, plan: ReadPlan) -> int:
    """Pixels of work a request costs: those read (the box at its scale), the resampled output, the
    expanded canvas of an arbitrary rotation, and a quality conversion of the result."""
    x0, y0, x1, y1 = plan.box
    w, h = res.size
    cost = (x1 - x0) * (y1 - y0) + (0 if plan.exact else w * h)
    rot = res.request.rotation
    if rot.right_angle is None:
        a = math.radians(float(rot.degrees))
        w, h = math.ceil(abs(w * math.cos(a)) + abs(h * math.sin(a))), math.ceil(abs(w * math.sin(a)) + abs(h * math.cos(a)))
        cost += w * h
    if res.request.quality in ("gray", "bitonal"):
        cost += w * h
    return cost


def level_size(width: int, height: int, k: int) -> tuple[int, int]:
    """Size of the image at scale factor 2**k (ceil, as Deep Zoom and IIIF tiles)."""
    return -(-width >> k) if k else width, -(-height >> k) if k else height


def max_scale_exponent(width: int, height: int) -> int:
    """The largest k with a level of at least one pixel that still differs from the one above (1×1 at the end)."""
    k = 0
    while max(level_size(width, height, k)) > 1:
        k += 1
    return k


def choose_scale(region: tuple[int, int, int, int], size: tuple[int, int], max_k: int) -> int:
    """The coarsest level (2**k) that still has at least as many pixels as the output in both axes:
    resampled from the next finer level that exists, never upscaled from a coarser one."""
    ratio = min(region[2] / size[0], region[3] / size[1])
    k = 0
    while k < max_k and 2 ** (k + 1) <= ratio + 1e-9:
        k += 1
    return k


def read_plan(res: Resolved, max_k: int | None = None) -> ReadPlan:
    x, y, w, h = res.region
    if max_k is None:
        max_k = max_scale_exponent(res.width, res.height)
    k = choose_scale(res.region, res.size, max_k)
    lw, lh = level_size(res.width, res.height, k)
    f = 2**k
    x0, y0 = x // f, y // f
    x1, y1 = min(lw, -(-(x + w) // f)), min(lh, -(-(y + h) // f))
    crop = (x / f - x0, y / f - y0, min((x + w) / f, lw) - x0, min((y + h) / f, lh) - y0)
    exact = crop == (0.0, 0.0, float(x1 - x0), float(y1 - y0)) and res.size == (x1 - x0, y1 - y0)
    return ReadPlan(k, (x0, y0, x1, y1), crop, exact)
