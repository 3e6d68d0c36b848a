"""IIIF request grammar, values, canonical forms and read plans (pure, no HTTP), table-driven from the
examples of the Image API 3.0 and 2.1 specifications (sections 4.1-4.5 and 4.7; the 300×200 image of
the spec's region and size examples)."""
from decimal import Decimal

import pytest

from tileserver.raster import geometry as g
from tileserver.protocols import iiif
from tileserver.protocols.iiif import IIIFError, Limits

W, H = 300, 200
LIMITS = Limits(1000, 1000, 1000 * 1000)
BOTH = ["2", "3"]


# -- region: 4.1 (identical in 2.1 and 3.0) ----------------------------------------------------------
@pytest.mark.parametrize("version", BOTH)
@pytest.mark.parametrize("text,expected", [
    ("full", (0, 0, 300, 200)),
    ("square", (50, 0, 200, 200)),
    ("125,15,120,140", (125, 15, 120, 140)),
    ("pct:41.6,7.5,40,70", (125, 15, 120, 140)),  # the spec's equivalent of the pixel example
    ("125,15,200,200", (125, 15, 175, 185)),  # partly outside: cropped (the spec's 175×185)
    ("pct:41.6,7.5,66.6,100", (125, 15, 175, 185)),
    ("0,0,300,200", (0, 0, 300, 200)),
    ("299,199,10,10", (299, 199, 1, 1)),
])
def test_region_examples(version, text, expected):
    region = iiif.parse_region(text)
    assert iiif.resolve_region(region, W, H) == expected
    assert str(region) == text
    size = "max" if version == "3" else "full"  # the region grammar is the same in both versions
    assert iiif.parse_request(version, text, size, "0", "default.jpg").region == region


# -- size: 4.2 -----------------------------------------------------------------------------------------
SIZES_3 = [
    ("max", (300, 200)), ("^max", (1000, 667)),  # ^max: scaled to the limits (maxWidth 1000 here)
    ("150,", (150, 100)), ("^360,", (360, 240)),
    (",150", (225, 150)), ("^,240", (360, 240)),
    ("pct:50", (150, 100)), ("^pct:120", (360, 240)),
    ("225,100", (225, 100)), ("^360,360", (360, 360)),
    ("!225,100", (150, 100)), ("^!360,360", (360, 240)),
    ("!300,300", (300, 200)), ("^150,", (150, 100)),
]
SIZES_2 = [
    ("full", (300, 200)), ("max", (300, 200)), ("150,", (150, 100)), (",150", (225, 150)),
    ("pct:50", (150, 100)), ("225,100", (225, 100)), ("!225,100", (150, 100)),
    ("360,", (360, 240)), ("pct:120", (360, 240)),  # 2.x scales above full without ^ (sizeAboveFull)
]


@pytest.mark.parametrize("text,expected", SIZES_3)
def test_size_examples_3(text, expected):
    size = iiif.parse_size(text, "3")
    assert iiif.resolve_size(size, "3", W, H, LIMITS) == expected
    assert str(size) == text


@pytest.mark.parametrize("text,expected", SIZES_2)
def test_size_examples_2(text, expected):
    size = iiif.parse_size(text, "2")
    assert iiif.resolve_size(size, "2", W, H, LIMITS) == expected
    assert str(size) == text


def test_max_is_constrained_by_the_limits():
    small = Limits(120, 1000, 10**6)
    assert iiif.resolve_size(iiif.parse_size("max", "3"), "3", W, H, small) == (120, 80)
    assert iiif.resolve_size(iiif.parse_size("max", "2"), "2", W, H, Limits(1000, 1000, 6000)) == (95, 63)
    with pytest.raises(IIIFError) as e:
        iiif.resolve_size(iiif.parse_size("200,", "3"), "3", W, H, small)
    assert e.value.status == 400 and e.value.parameter == "size" and "limits" in e.value.reason


# -- rotation, quality, format: 4.3-4.5 ------------------------------------------------------------------
@pytest.mark.parametrize("text,degrees,mirror,quarter", [
    ("0", 0, False, 0), ("90", 90, False, 1), ("180", 180, False, 2), ("270", 270, False, 3), ("360", 360, False, 0),
    ("!0", 0, True, 0), ("!180", 180, True, 2), ("22.5", Decimal("22.5"), False, None), ("!22.5", Decimal("22.5"), True, None),
])
def test_rotation_examples(text, degrees, mirror, quarter):
    r = iiif.parse_rotation(text)
    assert (r.degrees, r.mirror, r.right_angle) == (Decimal(degrees), mirror, quarter)
    assert str(r) == text


@pytest.mark.parametrize("version", BOTH)
@pytest.mark.parametrize("text,expected", [
    ("default.jpg", ("default", "jpg")), ("color.png", ("color", "png")), ("gray.webp", ("gray", "webp")),
    ("bitonal.jpg", ("bitonal", "jpg")), ("default.tif", ("default", "tif")), ("default.gif", ("default", "gif")),
])
def test_quality_format_examples(version, text, expected):
    assert iiif.parse_quality_format(text) == expected
    req = iiif.parse_request(version, "full", "max", "0", text)
    assert str(req).endswith("/" + text)


# -- errors: the parameter at fault and the status ---------------------------------------------------------
@pytest.mark.parametrize("version,region,size,rotation,qf,status,parameter", [
    ("3", "full,", "max", "0", "default.jpg", 400, "region"),
    ("3", "1,2,3", "max", "0", "default.jpg", 400, "region"),
    ("3", "-1,0,10,10", "max", "0", "default.jpg", 400, "region"),
    ("3", "pct:101,0,1,1", "max", "0", "default.jpg", 400, "region"),
    ("3", "pct:a,0,1,1", "max", "0", "default.jpg", 400, "region"),
    ("3", "full", "full", "0", "default.jpg", 400, "size"),  # 3.0 replaced full with max
    ("3", "full", "!,100", "0", "default.jpg", 400, "size"),
    ("3", "full", "^", "0", "default.jpg", 400, "size"),
    ("3", "full", ",", "0", "default.jpg", 400, "size"),
    ("2", "full", "^max", "0", "default.jpg", 400, "size"),  # no ^ in 2.x
    ("3", "full", "max", "361", "default.jpg", 400, "rotation"),
    ("3", "full", "max", "-90", "default.jpg", 400, "rotation"),
    ("3", "full", "max", "!", "default.jpg", 400, "rotation"),
    ("3", "full", "max", "0", "grey.jpg", 400, "quality"),
    ("3", "full", "max", "0", "default", 400, "quality"),
    ("3", "full", "max", "0", "default.xyz", 400, "format"),
    ("3", "full", "max", "0", "default.jp2", 501, "format"),
    ("2", "full", "full", "0", "default.pdf", 501, "format"),
])
def test_parse_errors(version, region, size, rotation, qf, status, parameter):
    with pytest.raises(IIIFError) as e:
        iiif.parse_request(version, region, size, rotation, qf)
    assert (e.value.status, e.value.parameter) == (status, parameter)
    assert parameter in e.value.reason


@pytest.mark.parametrize("version,region,size,why", [
    ("3", "0,0,0,10", "max", "zero"), ("3", "pct:0,0,0,10", "max", "zero"), ("3", "300,0,10,10", "max", "outside"),
    ("3", "0,200,10,10", "max", "outside"), ("3", "full", "0,", "zero"), ("3", "full", "!0,10", "zero"),
    ("3", "full", "301,", "upscale"), ("3", "full", ",201", "upscale"), ("3", "full", "pct:101", "upscale"),
    ("3", "full", "400,100", "upscale"), ("3", "full", "!600,600", "upscale"),  # the validator's reading of !w,h
    ("3", "full", "^1001,", "limits"), ("2", "full", "1001,", "limits"), ("2", "full", "pct:400", "limits"),
])
def test_resolve_errors(version, region, size, why):
    req = iiif.parse_request(version, region, size, "0", "default.jpg")
    with pytest.raises(IIIFError) as e:
        iiif.resolve(req, W, H, LIMITS)
    assert e.value.status == 400
    assert why in e.value.reason or (why == "upscale" and "^" in e.value.reason)


# -- canonical forms: 4.7 -------------------------------------------------------------------------------------
@pytest.mark.parametrize("version,path,canonical", [
    ("3", "full/max/0/default.jpg", "full/max/0/default.jpg"),
    ("3", "0,0,300,200/max/0/default.jpg", "full/max/0/default.jpg"),
    ("3", "pct:41.6,7.5,40,70/60,/0/default.png", "125,15,120,140/60,70/0/default.png"),
    ("3", "square/max/!90.0/gray.jpg", "50,0,200,200/max/!90/gray.jpg"),
    ("3", "full/150,/22.50/color.jpg", "full/150,100/22.5/color.jpg"),
    ("3", "full/!225,100/0/default.jpg", "full/150,100/0/default.jpg"),
    ("3", "full/pct:100/0/default.jpg", "full/max/0/default.jpg"),
    ("3", "full/^360,/0/default.jpg", "full/^360,240/0/default.jpg"),
    ("2", "full/full/0/default.jpg", "full/full/0/default.jpg"),
    ("2", "full/max/0/default.jpg", "full/full/0/default.jpg"),
    ("2", "full/,100/0/default.jpg", "full/150,/0/default.jpg"),
    ("2", "full/225,100/0/default.jpg", "full/225,100/0/default.jpg"),
    ("2", "pct:41.6,7.5,66.6,100/pct:50/270/bitonal.png", "125,15,175,185/88,/270/bitonal.png"),
])
def test_canonical(version, path, canonical):
    req = iiif.parse_request(version, *path.split("/"))
    res = iiif.resolve(req, W, H, LIMITS)
    assert res.canonical(LIMITS) == canonical
    again = iiif.resolve(iiif.parse_request(version, *canonical.split("/")), W, H, LIMITS)
    assert (again.region, again.size) == (res.region, res.size)  # the canonical URL asks for the same image


@pytest.mark.parametrize("version", BOTH)
@pytest.mark.parametrize("path", ["pct:041.60,7.50,40.0,70/pct:50.0/090/default.jpg",
                                  "10,20,30,40/!50,60/!180/color.png"])
def test_round_trip_of_normalized_values(version, path):
    req = iiif.parse_request(version, *path.split("/"))
    assert iiif.parse_request(version, *str(req).split("/")) == req
    assert str(iiif.parse_request(version, *str(req).split("/"))) == str(req)


def test_values_are_frozen():
    req = iiif.parse_request("3", "full", "max", "0", "default.jpg")
    with pytest.raises(AttributeError):
        req.quality = "gray"  # type: ignore[misc]
    assert hash(req) == hash(iiif.parse_request("3", "full", "max", "0", "default.jpg"))


# -- plans: which scale factor is read ------------------------------------------------------------------------
@pytest.mark.parametrize("region,size,k", [
    ((0, 0, 1000, 1000), (1000, 1000), 0), ((0, 0, 1000, 1000), (600, 600), 0),  # between levels: the finer one
    ((0, 0, 1000, 1000), (500, 500), 1), ((0, 0, 1000, 1000), (499, 499), 1), ((0, 0, 1000, 1000), (250, 250), 2),
    ((0, 0, 1000, 1000), (125, 125), 3), ((0, 0, 1000, 1000), (2000, 2000), 0),  # upscaled from the finest only
    ((0, 0, 1000, 500), (500, 500), 0),  # distorted: the axis that needs more pixels decides
])
def test_choose_scale(region, size, k):
    assert iiif.choose_scale(region, size, 9) == k


def test_tile_plan_is_exact_and_aligned():
    res = iiif.resolve(iiif.parse_request("3", "508,1016,508,508", "254,254", "0", "default.jpg"), 4000, 3000, LIMITS)
    assert iiif.read_plan(res) == iiif.ReadPlan(1, (254, 508, 508, 762), (0.0, 0.0, 254.0, 254.0), True)
    edge = iiif.resolve(iiif.parse_request("3", "3810,2794,190,206", "95,103", "0", "default.jpg"), 4000, 3000, LIMITS)
    plan = iiif.read_plan(edge)
    assert plan.k == 1 and plan.box == (1905, 1397, 2000, 1500) and plan.exact


def test_plan_of_a_region_off_the_grid_resamples_the_finer_level():
    res = iiif.resolve(iiif.parse_request("3", "3,5,301,203", "100,", "0", "default.jpg"), 4000, 3000, LIMITS)
    plan = iiif.read_plan(res)
    assert plan.k == 1 and plan.box == (1, 2, 152, 104) and not plan.exact
    assert plan.crop == (0.5, 0.5, 151.0, 102.0)


@pytest.mark.parametrize("k,synth,expected", [(0, 3, (3, 1)), (2, 3, (1, 1)), (3, 3, (0, 1)), (5, 3, (0, 4)),
                                              (0, 0, (0, 1)), (2, 0, (0, 4))])
def test_scale_source(k, synth, expected):
    assert g.scale_source(k, synth) == expected
    top = 12
    assert g.scale_source(k, synth) == g.level_source(top - k, top, synth)  # the same source as Deep Zoom


def test_level_sizes_match_deep_zoom():
    dz = g.dz_level_dims(4440, 5936)
    for k in range(len(dz)):
        assert iiif.level_size(4440, 5936, k) == dz[len(dz) - 1 - k]
    assert iiif.max_scale_exponent(4440, 5936) == len(dz) - 1
