"""The pages: the slide list and the OpenSeadragon viewer (``viewer/``), the Mirador
page, and the pinned npm builds they load."""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, abort, send_from_directory

from tileserver.web.http import service

OSD_BUILD = Path("node_modules") / "openseadragon" / "build" / "openseadragon"
MIRADOR_DIST = Path("node_modules") / "mirador" / "dist"

bp = Blueprint("viewer", __name__)


def viewer_dir() -> Path:
    return service().settings.viewer_dir


@bp.get("/")
def index():
    return send_from_directory(viewer_dir(), "index.html", max_age=0)


@bp.get("/view/<sid>")
def view(sid: str):
    service().slide(sid)
    return send_from_directory(viewer_dir(), "view.html", max_age=0)


@bp.get("/viewer/<path:name>")
def viewer_static(name: str):
    return send_from_directory(viewer_dir() / "static", name, max_age=300)


@bp.get("/osd/<path:name>")
def osd(name: str):
    build = viewer_dir() / OSD_BUILD
    if not build.is_dir():
        abort(404, f"OpenSeadragon is not installed: run `npm ci` in {viewer_dir()}")
    return send_from_directory(build, name, max_age=86400)


@bp.get("/mirador")
def mirador_page():
    return send_from_directory(viewer_dir(), "mirador.html", max_age=0)


@bp.get("/mirador-dist/<path:name>")
def mirador_dist(name: str):
    dist = viewer_dir() / MIRADOR_DIST
    if not dist.is_dir():
        abort(404, "Mirador is not installed: run `npm ci` in viewer/")
    return send_from_directory(dist, name, max_age=86400)
