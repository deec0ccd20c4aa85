"""Read-only HTTP(S) for the registry: what agents download from.

GET and HEAD of ``/{name}/{version}/{file}`` (only files a manifest lists, and the manifest),
``/index.json`` for the list. Byte ranges (``Range: bytes=a-b``, ``a-``, ``-n``) so an agent on a
flaky link resumes a download; a strong ETag (the file's sha256) with ``If-None-Match``; a bearer
token when configured. Standard library only, so it runs anywhere the edge extra runs.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from shared.manifest import sha256_file

from .registry import MANIFEST, Registry

logger = logging.getLogger(__name__)

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
CHUNK = 256 * 1024


class _Handler(BaseHTTPRequestHandler):
    server: RegistryHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "cropwatch-registry"

    def log_message(self, fmt: str, *args: object) -> None:
        logger.info("%s %s", self.address_string(), fmt % args)

    def _authorised(self) -> bool:
        token = self.server.token
        if not token:
            return True
        header = self.headers.get("Authorization", "")
        given = header[7:] if header.startswith("Bearer ") else ""
        return hmac.compare_digest(given.encode(), token.encode())

    def _error(self, status: HTTPStatus, text: str, extra: dict[str, str] | None = None) -> None:
        body = (text + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        try:
            self._serve()
        except (BrokenPipeError, ConnectionResetError):
            logger.info("client went away during %s", self.path)
        except Exception:
            logger.exception("failed to serve %s", self.path)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")

    def _serve(self) -> None:
        if not self._authorised():
            self._error(HTTPStatus.UNAUTHORIZED, "a bearer token is required", {"WWW-Authenticate": "Bearer"})
            return
        path = unquote(urlsplit(self.path).path)
        if path in ("/", "/index.json"):
            self._send_index()
            return
        parts = path.strip("/").split("/")
        if len(parts) != 3 or any(p in ("", ".", "..") for p in parts):
            self._error(HTTPStatus.NOT_FOUND, "not found: use /NAME/VERSION/FILE")
            return
        file = self.server.registry.file_path(*parts)
        if file is None or not file.is_file():
            self._error(HTTPStatus.NOT_FOUND, f"not found: {path}")
            return
        self._send_file(file)

    def _send_index(self) -> None:
        entries = [
            {
                "name": e.name,
                "version": e.version,
                "task": e.manifest.task,
                "created_at": e.manifest.created_at.isoformat(),
                "retired": e.retired is not None,
                "files": {f.variant: f"/{e.name}/{e.version}/{f.path}" for f in e.manifest.files},
                "manifest": f"/{e.name}/{e.version}/{MANIFEST}",
            }
            for e in self.server.registry.entries()
        ]
        body = json.dumps(entries, indent=2).encode()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_file(self, file: Path) -> None:
        size = file.stat().st_size
        etag = f'"{self.server.etag(file)}"'
        if etag in [t.strip() for t in self.headers.get("If-None-Match", "").split(",")]:
            self.send_response(HTTPStatus.NOT_MODIFIED)
            self.send_header("ETag", etag)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, end = 0, size - 1
        status = HTTPStatus.OK
        range_header = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if range_header and (if_range is None or if_range == etag):
            match = _RANGE.match(range_header.strip())
            if not match or (not match.group(1) and not match.group(2)):
                self._error(
                    HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, "bad range", {"Content-Range": f"bytes */{size}"}
                )
                return
            first, last = match.group(1), match.group(2)
            if first:
                start = int(first)
                end = min(int(last), size - 1) if last else size - 1
            else:
                start = max(size - int(last), 0)
            if start >= size or start > end:
                self._error(
                    HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
                    "range outside the file",
                    {"Content-Range": f"bytes */{size}"},
                )
                return
            status = HTTPStatus.PARTIAL_CONTENT
        length = end - start + 1
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if file.suffix == ".json" else "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.send_header("Cache-Control", "public, max-age=31536000, immutable")
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        with open(file, "rb") as fh:
            fh.seek(start)
            remaining = length
            while remaining > 0:
                block = fh.read(min(CHUNK, remaining))
                if not block:
                    break
                self.wfile.write(block)
                remaining -= len(block)


class RegistryHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], registry: Registry, token: str | None = None) -> None:
        super().__init__(address, _Handler)
        self.registry = registry
        self.token = token or None
        self._etags: dict[tuple[Path, int, int], str] = {}
        self._lock = threading.Lock()

    def etag(self, file: Path) -> str:
        st = file.stat()
        key = (file, st.st_size, st.st_mtime_ns)
        with self._lock:
            cached = self._etags.get(key)
        if cached is None:
            cached = sha256_file(file)[0]
            with self._lock:
                self._etags[key] = cached
        return cached

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else host  # typeshed allows bytes; AF_INET gives str
        return f"http://{name}:{port}"
