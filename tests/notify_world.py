"""Real receivers for the notification tests and a small world of alerts, users and subscriptions.

``Mailbox`` is an aiosmtpd SMTP server in this process; ``Receiver`` an ``http.server`` in a thread
that answers Apprise's generic JSON webhook (``json://``), ntfy (``ntfy://``) and the Telegram Bot API
(``tgram://``, pointed here with ``[notify] telegram_api_url``). Receiver can hold the first request
open to let a test kill the sender mid-delivery; a request whose sender vanished before the answer
is counted as ``abandoned``, not delivered.
"""

from __future__ import annotations

import email
import http.server
import io
import json
import select
import socket
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from PIL import Image
from sqlalchemy import Engine

from farm_monitor.app.auth import UsersFile
from farm_monitor.config import MonitorConfig
from farm_monitor.db import make_engine, migrate
from farm_monitor.db.dialect import Dialect
from farm_monitor.db.notifications import SubscriptionSpec, save_subscription
from farm_monitor.ingest.alerts import AlertEngine
from farm_monitor.ingest.metrics import Metrics
from farm_monitor.ingest.pipeline import Ingestor
from shared import messages as m
from shared.ids import new_msg_id
from shared.topics import device_topic
from tests.services import free_port

PASSWORD = "correct horse battery"
SECRET = "test-ack-secret-0123456789abcdef"


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Mailbox:
    def __init__(self) -> None:
        self.mails: list[Message] = []
        self.port = free_port()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mails.append(email.message_from_bytes(envelope.content))
        return "250 OK"

    def url(self, to: str) -> str:
        return f"mailto://127.0.0.1:{self.port}?from=cropwatch@farm.test&to={to}&mode=insecure"

    def __enter__(self) -> Mailbox:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()


@dataclass
class Receiver:
    requests: list[Request] = field(default_factory=list)
    abandoned: list[Request] = field(default_factory=list)
    fail_paths: set[str] = field(default_factory=set)
    hold_first: bool = False
    held: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    def serve(self) -> http.server.ThreadingHTTPServer:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                req = Request(self.command, self.path, dict(self.headers), body)
                with receiver.lock:
                    hold = receiver.hold_first and not receiver.held.is_set()
                    if hold:
                        receiver.held.set()
                if hold and self._sender_vanished():
                    with receiver.lock:
                        receiver.abandoned.append(req)
                    return
                if any(self.path.startswith(p) for p in receiver.fail_paths):
                    self.send_response(500)
                    self.end_headers()
                    return
                with receiver.lock:
                    receiver.requests.append(req)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"ok": true, "result": {"message_id": 1}}')

            def _sender_vanished(self, limit_s: float = 60.0) -> bool:
                """Wait (while the test kills the sender) until the client closes its end."""
                conn: socket.socket = self.connection
                ready, _, _ = select.select([conn], [], [], limit_s)
                return bool(ready) and conn.recv(1, socket.MSG_PEEK) == b""

            do_POST = do_PUT = _any

            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def json_url(self, path: str) -> str:
        return f"json://127.0.0.1:{self.port}{path}"

    def delivered(self, prefix: str) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.path.startswith(prefix)]


def jpeg_of(part: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(part)).size


def world(root: Path, db_url: str, **notify: Any) -> tuple[MonitorConfig, Engine]:
    """Migrated database, users (agro: agronomist, farmer-a: farmer of farm-a) and a config."""
    users = root / "users.json"
    UsersFile(users).add("agro", PASSWORD, "agronomist", ["*"])
    UsersFile(users).add("farmer-a", PASSWORD, "farmer", ["farm-a"])
    cfg = MonitorConfig.model_validate({
        "database": {"url": db_url}, "app": {"users_file": str(users)},
        "notify": {"monitor_url": "http://monitor.test:8501", "ack_secret": SECRET, **notify},
    })  # fmt: skip
    engine = make_engine(cfg.database, writer=True)
    migrate(engine)
    return cfg, engine


def add_sample(cfg: MonitorConfig, engine: Engine, field_id: str, label: str) -> None:
    img = Image.new("RGB", (480, 360), (40, 140, 60))
    buf = io.BytesIO()
    img.save(buf, "JPEG")
    msg = m.Sample(farm_id="farm-a", device_id="gw-a1", msg_id=new_msg_id(), field_id=field_id,
                   reason="low_confidence", source="cam", predicted_label=label, confidence=0.4,
                   width=480, height=360, image_jpeg=buf.getvalue())  # fmt: skip
    Ingestor(cfg, engine, Metrics()).process([(device_topic("farm-a", "gw-a1", "sample"), msg.to_json(), 1, 1, 0, 0.0)])


def raise_alert(
    cfg: MonitorConfig, engine: Engine, key: str, when: datetime, severity: str = "warning",
    rule: str = "disease", field_id: str | None = "north", farm: str = "farm-a",
) -> int:  # fmt: skip
    details = {"label": "Tomato___Late_blight", "count": 24, "total": 30, "percent": 80.0} if rule == "disease" else {}
    with engine.begin() as conn:
        AlertEngine(cfg.alerts, Dialect(conn), Metrics()).raise_alert(
            conn, rule, key, severity, farm, f"alert {key}", when, field_id=field_id,
            device_id=None if rule == "disease" else "gw-a1", details=details,
        )  # fmt: skip
        return int(conn.exec_driver_sql(f"SELECT max(id) FROM alerts WHERE dedup_key = '{key}'").scalar_one())


def resolve_alert(engine: Engine, key: str, when: datetime) -> None:
    with engine.begin() as conn:
        AlertEngine(MonitorConfig().alerts, Dialect(conn), Metrics()).resolve(conn, key, when)


def subscribe(engine: Engine, user: str, channels: list[str], **spec: Any) -> int:
    return save_subscription(engine, user, SubscriptionSpec(channels=channels, **spec), datetime.now(UTC))


def payload(req: Request) -> dict[str, Any]:
    return dict(json.loads(req.body))
