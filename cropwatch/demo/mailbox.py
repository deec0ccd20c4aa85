"""The demo's notifications: a local mailbox (an SMTP server in the demo process) and ``cropwatch notify``.

The demo agronomist is subscribed to every alert of the demo farm by email to this mailbox, so the
first disease alert arrives as a mail within the demo's first minutes: each one is written to
``var/demo/mailbox/*.eml`` (open it with any mail program) and its subject printed on the console.
"""

from __future__ import annotations

import email
import email.policy
import itertools
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from shared.fsutil import atomic_write_bytes

from .configs import demo_users
from .processes import free_port
from .settings import FARM_ID


class DemoMailbox:
    def __init__(self, folder: Path, console: Console) -> None:
        from aiosmtpd.controller import Controller

        self.folder = folder
        self.console = console
        self.port = free_port()
        self._n = itertools.count(1)
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content: bytes = envelope.content
        msg = email.message_from_bytes(content, policy=email.policy.default)
        path = self.folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{next(self._n):04d}.eml"
        atomic_write_bytes(path, content)
        self.console.print(f"[bold]notification[/bold] {msg['subject']}  -> {path}")
        return "250 OK"

    def url(self) -> str:
        return f"mailto://127.0.0.1:{self.port}?from=cropwatch@demo.farm&to=agronomist@demo.farm&mode=insecure"

    def start(self) -> DemoMailbox:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()


def start_notifications(root: Path, console: Console, stack: Any) -> DemoMailbox | None:
    """Mailbox, the agronomist's subscription, and ``cropwatch notify``; None when aiosmtpd is missing."""
    try:
        mailbox = DemoMailbox(root / "mailbox", console).start()
    except ImportError:
        console.print("notify      off: the demo's mailbox needs aiosmtpd (pip install 'cropwatch[all]')")
        return None
    from farm_monitor.db import make_engine, migrate
    from farm_monitor.db.notifications import SubscriptionSpec, list_subscriptions, save_subscription

    demo_users(root)
    engine = make_engine(f"sqlite:///{root / 'cropwatch.db'}", writer=True)
    try:
        migrate(engine)
        spec = SubscriptionSpec(name="demo mailbox", farms=[FARM_ID], min_severity="info", channels=[mailbox.url()])
        with engine.connect() as conn:
            mine = [sid for sid, _, s in list_subscriptions(conn, "agronomist") if s.name == spec.name]
        # The mailbox port is new on every run: the one demo subscription is updated to it.
        save_subscription(engine, "agronomist", spec, datetime.now(UTC), mine[0] if mine else None)
    finally:
        engine.dispose()
    stack.start("notify", ["notify", "--config", str(root / "monitor.toml")])
    console.print(f"notify      alerts to the agronomist by mail -> {mailbox.folder}")
    return mailbox
