"""The chaos soak's people side: the farm monitor, and ``cropwatch notify`` mailing an agronomist.

The monitor (Streamlit) runs through the whole soak and must answer its health check at the end;
notify reads the alerts the faults raise (device offline, outbox backlog) from the same database,
under the same PostgreSQL terminations as ingest, and mails them to a local SMTP server in the
harness (aiosmtpd). The report counts, per alert raised in the fault phase, whether its "raised"
notification reached the mailbox, and the ledger's states (a rate-capped subscriber gets a digest).
"""

from __future__ import annotations

import email
import email.policy
import os
import subprocess
import threading
import urllib.request
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from chaos_stack import FARM, child_env, cropwatch

from tests.services import free_port

USER = "agronomist"


class Mailbox:
    """An SMTP server in the harness process; keeps each mail's subject."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.port = free_port()
        self.subjects: list[str] = []
        self._lock = threading.Lock()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self._lock:
            self.subjects.append(str(msg["subject"]))
        return "250 OK"

    def url(self) -> str:
        return f"mailto://127.0.0.1:{self.port}?from=cropwatch@chaos.farm&to=agronomist@chaos.farm&mode=insecure"

    def start(self) -> Mailbox:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def count(self) -> int:
        with self._lock:
            return len(self.subjects)


def add_user_and_subscription(root: Path, db_url: str, mailbox: Mailbox) -> None:
    """The agronomist (in the monitor's users file) subscribed to every alert of the farm by mail."""
    from farm_monitor.db.notifications import SubscriptionSpec, save_subscription

    subprocess.run(
        cropwatch("users", "--file", str(root / "monitor-users.json"), "add", USER, "--role", "agronomist",
                  "--farm", FARM, "--password-env", "CHAOS_PASSWORD"),
        env={**child_env(), "CHAOS_PASSWORD": os.urandom(12).hex()}, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    engine = sa.create_engine(db_url)
    try:
        spec = SubscriptionSpec(name="chaos mailbox", farms=[FARM], min_severity="info", channels=[mailbox.url()])
        save_subscription(engine, USER, spec, datetime.now(UTC))
    finally:
        engine.dispose()


def monitor_healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=5) as resp:
            return resp.status == 200
    except OSError:
        return False


def notifications_pending(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(
            "SELECT COUNT(*) FROM notification_deliveries WHERE state IN ('pending', 'sending')"
        )).scalar_one())  # fmt: skip


def notification_summary(engine: sa.Engine, since: datetime, before: float, mailbox: Mailbox) -> dict[str, Any]:
    """Alerts raised in the fault phase and how many of them had their "raised" notice delivered."""
    with engine.connect() as conn:
        alerts = conn.execute(sa.text("SELECT id, raised_at FROM alerts")).fetchall()
        rows = conn.execute(sa.text("SELECT alert_id, event, state FROM notification_deliveries")).fetchall()
    in_phase = {a for a, raised in alerts if since <= _utc(raised) and _utc(raised).timestamp() <= before}
    told = {a for a, event, state in rows if event == "raised" and state in ("sent", "digested")}
    return {
        "alerts_raised": len(in_phase),
        "raised_notice_delivered": len(in_phase & told),
        "ledger_states": dict(Counter(f"{event}:{state}" for _, event, state in rows)),
        "mails_received": mailbox.count(),
    }


def _utc(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)
