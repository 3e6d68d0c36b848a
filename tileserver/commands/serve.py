"""`tileserver serve [SLIDE_DIR]`: serve a folder of slides with waitress (a production WSGI server).

The flags are the fields of ``tileserver.settings.Settings``. The address is bound
before the model loads, so a taken port or a bad host ends the command at once
with one line (exit status 2), before anything is announced. SIGTERM and SIGINT
drain the requests in flight and exit 0 (``commands.drain``).
"""
from __future__ import annotations

import argparse
import logging
import socket

from tileserver.errors import UsageError
from tileserver.settings import Settings, cli_fields, flag_of

log = logging.getLogger("tileserver")


def add_arguments(p: argparse.ArgumentParser) -> None:
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in cli_fields():
        meta = f.metadata
        target = groups.setdefault(meta["group"], p.add_argument_group(meta["group"])) if meta["group"] else p
        shown = f" (default: {f.default})" if f.default is not None else ""
        if meta["flag"] == "slide_dir":
            target.add_argument(f.name, nargs="?", type=meta["cast"], default=f.default, help=meta["help"] + shown)
        elif isinstance(f.default, bool):
            target.add_argument("--" + f.name.replace("_", "-"), dest=f.name, action="store_true", help=meta["help"])
        else:
            flag = flag_of(f)
            shown = f" (default: {','.join(f.default)})" if isinstance(f.default, tuple) else shown
            target.add_argument(flag, dest=f.name, type=meta["cast"], default=f.default, choices=meta["choices"],
                                action="append" if meta["many"] else "store",
                                metavar=None if meta["choices"] else flag[2:].replace("-", "_").upper(),
                                help=meta["help"] + shown)
    p.set_defaults(func=run)


def settings_from(args: argparse.Namespace) -> Settings:
    values = {f.name: getattr(args, f.name) for f in cli_fields()}
    for f in cli_fields():  # a repeated flag: the first value, then the rest
        if f.metadata["many"] and values[f.name] is not None:
            values[f.name], values[f.metadata["many"]] = values[f.name][0], tuple(values[f.name][1:])
    try:
        s = Settings(**values, warm_up=True)
    except ValueError as e:
        raise UsageError(str(e)) from None
    folder = s.slide_dir
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"slide folder {folder} is a file, not a folder: serve the folder that holds it "
                         f"({folder.parent}), or make a stored slide of it with `tileserver ingest {folder} -o DIR`")
    if not folder.is_dir():
        raise UsageError(f"slide folder {folder} does not exist")
    return s


def listen(host: str, port: int) -> list[socket.socket]:
    """Sockets bound to host:port as waitress would bind them (not yet listening);
    a UsageError when the address is taken or cannot be bound."""
    from waitress.adjustments import Adjustments

    try:
        wanted = Adjustments(host=host, port=port).listen
    except ValueError:
        raise UsageError(f"cannot listen on {host}:{port}: not a valid host") from None
    socks: list[socket.socket] = []
    try:
        for family, socktype, proto, address in wanted:
            sock = socket.socket(family, socktype, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as e:
        for sock in socks:
            sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return socks


def run(args: argparse.Namespace) -> int:
    from tileserver.inference import BundleError

    s = settings_from(args)
    socks = listen(s.host, s.port)
    try:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from waitress import create_server

        from tileserver.commands.drain import serve_until_stopped
        from tileserver.web.app import create_app

        try:
            app = create_app(s)
        except (BundleError, FileNotFoundError, ValueError) as e:
            raise UsageError(str(e)) from None
        svc = app.extensions["tileserver"]
        models = ", ".join(f"{m.model_id} ({m.kind})" for m in svc.model_modes)
        # listening from here; the lookahead lets waitress notice a client that left, so its queued inference is dropped
        server = create_server(app, sockets=socks, threads=s.http_threads, ident="msr-tileserver",
                               channel_request_lookahead=1)
        log.info("serving %d slide(s) from %s with %s on %s at http://%s:%d/", len(svc.slides()), s.slide_dir,
                 models, svc.engine.provider, s.host, socks[0].getsockname()[1])
        serve_until_stopped(server, s.drain_timeout)
        svc.close()
    finally:
        for sock in socks:
            sock.close()
    return 0
