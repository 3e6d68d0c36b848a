"""`tileserver serve [SLIDE_DIR]`: serve a folder of slides with waitress (a production WSGI server)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("slide_dir", nargs="?", type=Path, default=Path("var/slides"))
    p.add_argument("--model", type=Path, help="model bundle folder (default: the bundled msr-lite)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--cache-mb", type=float, default=1024, help="memory for cached blocks and tiles (MiB)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: one per core)")
    p.add_argument("--http-threads", type=int, default=8, help="waitress worker threads")
    p.add_argument("--queue", type=int, default=32, help="inference jobs that may wait before 503")
    p.add_argument("--assume-mpp", type=float, help="mpp (µm/px) for slides that carry none")
    p.add_argument("--tile-size", type=int, default=254)
    p.add_argument("--overlap", type=int, default=1)
    p.add_argument("--jpeg-quality", type=int, default=90)
    iiif = p.add_argument_group("IIIF")
    iiif.add_argument("--synthesis-budget", type=int, default=24,
                      help="blocks not yet cached that one IIIF request may synthesize (beyond: 403)")
    iiif.add_argument("--max-area", type=int, default=4096 * 4096, help="IIIF maxArea (pixels) of one image request")
    iiif.add_argument("--max-side", type=int, default=8192, help="IIIF maxWidth and maxHeight")
    iiif.add_argument("--rights", help="rights URI announced in info.json")
    iiif.add_argument("--base-url", help="public URL of /iiif when behind a proxy (e.g. https://host/iiif)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tileserver.commands.cli import UsageError
    from tileserver.inference.engine import BundleError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.slide_dir.is_dir():
        raise UsageError(f"slide folder {args.slide_dir} does not exist")
    if args.cache_mb < 0 or args.port < 0 or args.tile_size < 2:
        raise UsageError("--cache-mb, --port and --tile-size must be positive")
    if args.synthesis_budget < 0 or args.max_area < 1 or args.max_side < 1:
        raise UsageError("--synthesis-budget, --max-area and --max-side must be positive")
    from waitress import serve

    from tileserver.web.app import create_app

    try:
        app = create_app({
            "SLIDE_DIR": str(args.slide_dir), "MODEL": str(args.model) if args.model else None, "DEVICE": args.device,
            "THREADS": args.threads, "CACHE_MB": args.cache_mb, "ASSUME_MPP": args.assume_mpp,
            "QUEUE_SIZE": args.queue, "TILE_SIZE": args.tile_size, "OVERLAP": args.overlap,
            "JPEG_QUALITY": args.jpeg_quality, "WARM_UP": True,
            "IIIF_SYNTH_BUDGET": args.synthesis_budget, "IIIF_MAX_AREA": args.max_area,
            "IIIF_MAX_WIDTH": args.max_side, "IIIF_MAX_HEIGHT": args.max_side,
            "IIIF_RIGHTS": args.rights, "IIIF_BASE_URL": args.base_url,
        })
    except (BundleError, FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    svc = app.extensions["tileserver"]
    logging.getLogger("tileserver").info(
        "serving %d slide(s) from %s with %s on %s at http://%s:%d/", len(svc.catalog.ids()), args.slide_dir,
        svc.bundle.model_id, svc.engine.provider, args.host, args.port)
    serve(app, host=args.host, port=args.port, threads=args.http_threads, ident="msr-tileserver")
    return 0
