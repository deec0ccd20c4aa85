"""``cropwatch registry serve``: the registry folder over HTTP, read-only."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from .registry import Registry
from .registry_server import RegistryHTTPServer

logger = logging.getLogger(__name__)


def main(argv: list[str], prog: str = "cropwatch registry") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    serve = sub.add_parser("serve", help="serve the registry folder over HTTP (range requests, ETag, bearer token)")
    serve.add_argument("--root", type=Path, default=Path("var/registry"), help="registry folder")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8600)
    serve.add_argument("--token-file", type=Path, help="file holding the bearer token agents must send")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    token = None
    if args.token_file:
        try:
            token = args.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            print(f"{prog}: cannot read token file {args.token_file}: {exc.strerror}", file=sys.stderr)
            return 2
        if not token:
            print(f"{prog}: token file {args.token_file} is empty", file=sys.stderr)
            return 2
    try:
        server = RegistryHTTPServer((args.host, args.port), Registry(args.root), token)
    except OSError as exc:
        print(f"{prog}: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, name="registry-http", daemon=True)
    thread.start()
    logger.info("serving %s on %s (token %s)", args.root, server.url, "required" if token else "not required")
    stop.wait()
    server.shutdown()
    server.server_close()
    return 0
