"""The notify loop: plan ledger rows for new, escalated and resolved alerts, deliver what is due,
send digests of what the rate cap held back, then run the periodic tasks (the farm report's hook).

Nothing here raises out of :meth:`NotifyService.run`: a failing channel is a retry and at last a
dead ledger row, a failing tick is logged and the next one runs.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, or_, select

from .. import acklink
from ..app.auth import AuthError, User, UsersFile
from ..config import MonitorConfig
from ..db.models import Alert, table_of
from ..db.notifications import SUBS, SubscriptionSpec, channel_key, list_subscriptions, redact_channel, spec_of
from . import channels, ledger
from .message import compose, compose_digest, thumbnail
from .policy import AlertView, backoff_s, bumped, matches, quiet_until

logger = logging.getLogger(__name__)
A = table_of(Alert)
Clock = Callable[[], datetime]


@dataclass
class PeriodicTask:
    """Something the notify service runs every ``every_s`` seconds with the service clock's time."""

    name: str
    every_s: float
    run: Callable[[datetime], Any]
    last_run: datetime | None = None


@dataclass
class TickStats:
    planned: int = 0
    sent: int = 0
    failed: int = 0
    dead: int = 0
    held: int = 0
    deferred: int = 0
    obsolete: int = 0
    digests: int = 0
    errors: list[str] = field(default_factory=list)


def _alert(row: Any) -> AlertView:
    return AlertView(
        row.id, row.rule, row.severity, row.farm_id, row.field_id, row.device_id, row.message, row.details,
        ledger.utc(row.raised_at), row.resolved_at and ledger.utc(row.resolved_at),
        row.acknowledged_at and ledger.utc(row.acknowledged_at),
    )  # fmt: skip


class NotifyService:
    def __init__(
        self, cfg: MonitorConfig, engine: Engine, clock: Clock | None = None, worker: str | None = None
    ) -> None:
        self.cfg = cfg
        self.s = cfg.notify
        self.engine = engine
        self.clock: Clock = clock or (lambda: datetime.now(UTC))
        self.worker = worker or f"{socket.gethostname()}-{os.getpid()}"
        self.users_file = UsersFile(cfg.app.users_file)
        # Hook for other periodic deliveries of this service. The farm report (issue #17 item 5)
        # appends PeriodicTask("farm-report", 300, lambda now: deliver_due_reports(...)) here.
        self.periodic_tasks: list[PeriodicTask] = []
        self._tmp = Path(tempfile.mkdtemp(prefix="cropwatch-notify-"))
        channels.configure(self.s)
        if self.s.ack_secret is None:
            logger.warning("notify.ack_secret is not set: notifications go out without acknowledge links")

    # --- users ---------------------------------------------------------------------------------

    def _users(self) -> dict[str, User]:
        try:
            return {u.username: u for u in self.users_file.list()}
        except AuthError as exc:
            logger.error("cannot read the users file: %s; nobody is notified until it is fixed", exc)
            return {}

    # --- planning ------------------------------------------------------------------------------

    def plan(self, now: datetime) -> int:
        horizon = now - timedelta(hours=self.s.lookback_h)
        escalate = timedelta(minutes=self.s.escalate_after_min)
        users = self._users()
        with self.engine.begin() as conn:
            alerts = [
                _alert(r)
                for r in conn.execute(
                    select(A).where(or_(A.c.raised_at >= horizon, A.c.resolved_at >= horizon)).order_by(A.c.id)
                )
            ]
            if not alerts:
                return 0
            subs = list_subscriptions(conn)
            seen = ledger.known(conn, [a.id for a in alerts])
            rows: list[ledger.Planned] = []
            for sid, username, spec in subs:
                user = users.get(username)
                for alert in alerts:
                    visible = user is not None and user.sees_farm(alert.farm_id)
                    for ch in spec.channels:
                        rows += self._plan_one(seen, alert, sid, username, spec, channel_key(ch), visible, now,
                                               horizon, escalate)  # fmt: skip
            return ledger.plan(conn, rows, now)

    def _plan_one(
        self, seen: dict[tuple[int, int, str, str], str], alert: AlertView, sid: int, username: str,
        spec: SubscriptionSpec, ck: str, visible: bool, now: datetime, horizon: datetime, escalate: timedelta,
    ) -> list[ledger.Planned]:  # fmt: skip
        out: list[ledger.Planned] = []

        def want(event: str) -> None:
            if (alert.id, sid, ck, event) not in seen:
                out.append(ledger.Planned(alert.id, sid, ck, event, username))

        if alert.raised_at >= horizon and matches(spec, alert, alert.severity, visible):
            want("raised")
        open_unacked = alert.resolved_at is None and alert.acknowledged_at is None
        if (
            escalate > timedelta(0) and open_unacked and now - alert.raised_at >= escalate
            and matches(spec, alert, bumped(alert.severity), visible)
        ):  # fmt: skip
            want("escalated")
        told = {seen.get((alert.id, sid, ck, e)) for e in ("raised", "escalated")} & {"sent", "digested"}
        if alert.resolved_at is not None and told:
            want("resolved")
        return out

    # --- delivery ------------------------------------------------------------------------------

    def deliver(self, now: datetime, stats: TickStats) -> None:
        while True:
            with self.engine.begin() as conn:
                batch = ledger.claim(conn, self.worker, now, self.s.lease_s, limit=10)
            if not batch:
                return
            users = self._users()
            for row in batch:
                try:
                    self._deliver_one(row, users, stats)
                except Exception as exc:
                    # The row stays claimed; its lease runs out and it is retried. The loop goes on.
                    logger.exception("delivering ledger row %s failed", row.id)
                    stats.errors.append(f"{row.id}: {type(exc).__name__}")
            now = self.clock()

    def _load(self, conn: Connection, row: ledger.Claimed) -> tuple[AlertView | None, SubscriptionSpec | None]:
        a = conn.execute(select(A).where(A.c.id == row.alert_id)).first()
        s = conn.execute(select(SUBS).where(SUBS.c.id == row.subscription_id)).first()
        return (_alert(a) if a else None), (spec_of(s) if s else None)

    def _finish(self, row: ledger.Claimed, **values: Any) -> None:
        with self.engine.begin() as conn:
            if not ledger.finish(conn, row.id, self.worker, **values):
                logger.warning("ledger row %s was taken over by another notify process", row.id)

    def _deliver_one(self, row: ledger.Claimed, users: dict[str, User], stats: TickStats) -> None:
        now = self.clock()
        with self.engine.begin() as conn:
            if not ledger.renew(conn, row.id, self.worker, now, self.s.lease_s):
                logger.warning("ledger row %s was taken over by another notify process before its turn", row.id)
                return
        with self.engine.connect() as conn:
            alert, spec = self._load(conn, row)
        chan = next((c for c in (spec.channels if spec else []) if channel_key(c) == row.channel_key), None)
        stale = alert is None or spec is None or chan is None or not spec.enabled
        if alert is not None and row.event == "raised":
            stale = stale or alert.resolved_at is not None
        if alert is not None and row.event == "escalated":
            stale = stale or alert.resolved_at is not None or alert.acknowledged_at is not None
        if stale:
            stats.obsolete += 1
            self._finish(row, state="obsolete")
            return
        assert alert is not None and spec is not None and chan is not None
        severity = bumped(alert.severity) if row.event == "escalated" else alert.severity
        until = quiet_until(spec, now, severity)
        if until is not None:
            stats.deferred += 1
            self._finish(row, state="pending", next_attempt_at=until, attempts=row.attempts - 1)
            return
        with self.engine.connect() as conn:
            capped = ledger.has_held(conn, row.subscription_id, row.channel_key) or (
                ledger.sent_since(conn, row.subscription_id, row.channel_key, now - timedelta(hours=1))
                >= self.s.rate_cap_per_hour
            )
            thumb = (
                None if capped or row.event == "resolved" else thumbnail(conn, alert, self.s.thumbnail_px, self._tmp)
            )
        if capped:
            stats.held += 1
            self._finish(row, state="held")
            return
        msg = compose(alert, row.event, severity, self.s.monitor_url, self._ack_url(row, users, now))
        self._send(row, chan, msg.title, msg.body, thumb, stats)

    def _ack_url(self, row: ledger.Claimed, users: dict[str, User], now: datetime) -> str | None:
        user = users.get(row.username)
        if self.s.ack_secret is None or row.event == "resolved" or user is None or not user.can("acknowledge"):
            return None
        claim = acklink.AckClaim(row.alert_id, row.username, row.id, now + timedelta(hours=self.s.ack_link_ttl_h))
        return f"{self.s.monitor_url.rstrip('/')}/?ack={acklink.sign(self.s.ack_secret.get_secret_value(), claim)}"

    def _send(
        self, row: ledger.Claimed, chan: str, title: str, body: str, thumb: Path | None, stats: TickStats
    ) -> None:
        try:
            result = channels.send(chan, self.s, title, body, thumb)
        except channels.ChannelError as exc:
            stats.dead += 1
            logger.error("notification %s to %s is dead: %s", row.id, redact_channel(chan), exc)
            self._finish(row, state="dead", last_error=str(exc))
            return
        finally:
            if thumb is not None:
                thumb.unlink(missing_ok=True)
        now = self.clock()
        if result.ok:
            stats.sent += 1
            logger.info("sent %s of alert %s to %s on %s", row.event, row.alert_id, row.username, redact_channel(chan))
            self._finish(row, state="sent", sent_at=now, last_error=None, claimed_by=self.worker)  # who sent it
        elif row.attempts >= self.s.max_attempts:
            stats.dead += 1
            logger.error("notification %s to %s is dead after %d tries: %s", row.id, redact_channel(chan),
                         row.attempts, result.error)  # fmt: skip
            self._finish(row, state="dead", last_error=result.error)
        else:
            stats.failed += 1
            wait = backoff_s(row.attempts, self.s.retry_base_s, self.s.retry_max_s)
            logger.warning("notification %s to %s failed (try %d), retry in %.0f s: %s", row.id,
                           redact_channel(chan), row.attempts, wait, result.error)  # fmt: skip
            self._finish(row, state="pending", next_attempt_at=now + timedelta(seconds=wait), last_error=result.error)

    # --- digests -------------------------------------------------------------------------------

    def digests(self, now: datetime, stats: TickStats) -> None:
        with self.engine.begin() as conn:
            pairs = ledger.held_channels(conn, now)
        for sid, ck in pairs:
            with self.engine.begin() as conn:
                if ledger.sent_since(conn, sid, ck, now - timedelta(hours=1)) >= self.s.rate_cap_per_hour:
                    continue
                rows = ledger.claim_held(conn, sid, ck, self.worker, now, self.s.lease_s)
            if rows:
                self._send_digest(rows, stats)

    def _send_digest(self, rows: list[ledger.Claimed], stats: TickStats) -> None:
        with self.engine.connect() as conn:
            loaded = [(r, *self._load(conn, r)) for r in rows]
        spec = loaded[0][2]
        chan = next((c for c in (spec.channels if spec else []) if channel_key(c) == rows[0].channel_key), None)
        items = [(r.event, a) for r, a, _ in loaded if a is not None]
        if chan is None or not items:
            for r in rows:
                self._finish(r, state="obsolete")
            return
        msg = compose_digest(items, self.s.monitor_url)
        try:
            result = channels.send(chan, self.s, msg.title, msg.body, None)
        except channels.ChannelError as exc:
            result = channels.SendResult(False, str(exc))
        now = self.clock()
        for r in rows:
            if result.ok:
                self._finish(r, state="digested", sent_at=now)
            else:
                dead = r.attempts + 1 >= self.s.max_attempts
                self._finish(r, state="dead" if dead else "held", attempts=r.attempts + 1, last_error=result.error)
        stats.digests += int(result.ok)

    # --- loop ----------------------------------------------------------------------------------

    def tick(self) -> TickStats:
        stats = TickStats()
        now = self.clock()
        stats.planned = self.plan(now)
        self.digests(now, stats)
        self.deliver(now, stats)
        for task in self.periodic_tasks:
            if task.last_run is None or (now - task.last_run).total_seconds() >= task.every_s:
                task.last_run = now
                try:
                    task.run(now)
                except Exception:
                    logger.exception("periodic task %s failed", task.name)
        return stats

    def run(self, stop: threading.Event) -> None:
        logger.info("notify %s: polling every %.0f s", self.worker, self.s.poll_interval_s)
        while not stop.is_set():
            try:
                stats = self.tick()
                if stats.sent or stats.dead or stats.digests:
                    logger.info("tick: %s", stats)
            except Exception:
                logger.exception("notify tick failed; retrying after the poll interval")
            stop.wait(self.s.poll_interval_s)
        self.close()

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)
