"""Daily and weekly farm reports by email, once per subscriber, farm and period.

The ledger (``report_deliveries``, unique on user, farm, frequency and period) is claimed before
the mail is built: a second process, a second tick or a restart finds the row and sends nothing.
A failed send is retried on later ticks up to ``max_attempts``, then recorded ``dead``; a claim
left ``sending`` by a process that died is taken over after ``claim_timeout_s`` (the one case
that can send twice: the process died after the server took the mail but before the row said so).
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from email.message import EmailMessage
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..config import MonitorConfig, SmtpSettings
from ..db.models import ReportDelivery, table_of
from ..db.notifications import list_subscriptions
from ..layout import FarmLayout, load_layout
from .build import FarmReport, build_farm_report
from .mail import build_report_email

logger = logging.getLogger(__name__)
LEDGER = table_of(ReportDelivery)
Frequency = Literal["daily", "weekly"]
Sender = Callable[[EmailMessage], None]


@dataclass(frozen=True)
class ReportSubscription:
    """One person's report of one farm: what the subscriptions table says, resolved to an address."""

    user: str
    email: str
    farm: str
    frequency: Frequency
    timezone: str = "UTC"


@dataclass(frozen=True)
class Period:
    key: str  # 2026-12-02 (daily) | 2026-W48 (weekly), in the subscriber's time zone
    start: datetime
    end: datetime


@dataclass(frozen=True)
class Outcome:
    user: str
    farm: str
    period: str
    status: str  # sent | failed | dead | skipped (another process or tick has it)
    error: str | None = None


def due_period(frequency: Frequency, timezone: str, now: datetime, send_after_hour: int = 6) -> Period:
    """The latest complete day or ISO week (Monday to Monday) in ``timezone`` whose report is due at ``now``.

    Due from ``send_after_hour`` local time on the day after the period, so a report waits for the
    morning and not for midnight; before that hour the period before is the due one (the ledger
    makes it a no-op when it went out already, and catches it up when the service was down).
    """
    zone = ZoneInfo(timezone)
    local = now.astimezone(zone)
    today = local.date()
    if frequency == "daily":
        end_day = today if local.time() >= time(send_after_hour) else today - timedelta(days=1)
        start_day = end_day - timedelta(days=1)
        key = start_day.isoformat()
    else:
        monday = today - timedelta(days=today.weekday())
        if today == monday and local.time() < time(send_after_hour):
            monday -= timedelta(days=7)
        end_day, start_day = monday, monday - timedelta(days=7)
        iso = start_day.isocalendar()
        key = f"{iso.year}-W{iso.week:02d}"
    return Period(key, _midnight(start_day, zone), _midnight(end_day, zone))


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    # Local midnight, then UTC: a day with a DST change is 23 or 25 hours long, as people live it.
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


def smtp_sender(settings: SmtpSettings) -> Sender:
    """Send a message through the configured server (STARTTLS or implicit TLS, optional login)."""

    def send(msg: EmailMessage) -> None:
        context = ssl.create_default_context(cafile=settings.ca_file) if settings.ssl or settings.starttls else None
        cls = smtplib.SMTP_SSL if settings.ssl else smtplib.SMTP
        kwargs: dict[str, Any] = {"context": context} if settings.ssl else {}
        with cls(settings.host, settings.port, timeout=settings.timeout_s, **kwargs) as smtp:
            if settings.starttls and not settings.ssl:
                smtp.starttls(context=context)
            if settings.user:
                password = settings.password.get_secret_value() if settings.password else ""
                smtp.login(settings.user, password)
            smtp.send_message(msg)

    return send


def deliver_due_reports(
    engine: Engine,
    settings: MonitorConfig,
    now: datetime,
    subscriptions: Iterable[ReportSubscription],
    send: Sender | None = None,
    layout: FarmLayout | None = None,
) -> list[Outcome]:
    """Build and send every report due at ``now`` that the ledger does not hold yet; never raises for one mail."""
    cfg = settings.report
    send = send or smtp_sender(cfg.smtp)
    layout = layout if layout is not None else load_layout(settings.app.farm_file)
    built: dict[tuple[str, datetime, datetime], FarmReport] = {}
    out: list[Outcome] = []
    for sub in subscriptions:
        period = due_period(sub.frequency, sub.timezone, now, cfg.send_after_hour)
        row_id = _claim(engine, sub, period, now, cfg.max_attempts, cfg.claim_timeout_s)
        if row_id is None:
            out.append(Outcome(sub.user, sub.farm, period.key, "skipped"))
            continue
        try:
            key = (sub.farm, period.start, period.end)
            if key not in built:
                built[key] = build_farm_report(
                    engine, sub.farm, period.start, period.end, cfg.monitor_url, layout=layout,
                    rule=settings.alerts.disease, risk_window_h=settings.app.risk_window_hours,
                    silent_after_s=settings.alerts.device_offline.after_s,
                )  # fmt: skip
            msg = build_report_email(built[key], sub.email, cfg.from_addr, now=now)
            send(msg)
        except Exception as exc:  # one bad report or mail server must not stop the others
            logger.exception("farm report %s %s for %s (%s) failed", sub.frequency, period.key, sub.user, sub.farm)
            status = _failed(engine, row_id, f"{type(exc).__name__}: {exc}", cfg.max_attempts)
            out.append(Outcome(sub.user, sub.farm, period.key, status, str(exc)))
            continue
        with engine.begin() as conn:
            conn.execute(update(LEDGER).where(LEDGER.c.id == row_id).values(
                status="sent", sent_at=datetime.now(UTC), message_id=str(msg["Message-ID"]), error=None))  # fmt: skip
        logger.info("sent the %s farm report %s of %s to %s", sub.frequency, period.key, sub.farm, sub.user)
        out.append(Outcome(sub.user, sub.farm, period.key, "sent"))
    return out


def _claim(
    engine: Engine, sub: ReportSubscription, period: Period, now: datetime, max_attempts: int, timeout_s: float
) -> int | None:
    """The ledger row's id when this process now owns the period's report, else None."""
    values = {"username": sub.user, "farm_id": sub.farm, "frequency": sub.frequency, "period_key": period.key}
    try:
        with engine.begin() as conn:
            result = conn.execute(insert(LEDGER).values(
                **values, period_start=period.start, period_end=period.end, to_addr=sub.email, status="sending",
                attempts=1, claimed_at=now))  # fmt: skip
            return int(result.inserted_primary_key[0])  # type: ignore[index]
    except IntegrityError:
        pass
    with engine.begin() as conn:
        row = conn.execute(select(LEDGER).where(*(LEDGER.c[k] == v for k, v in values.items()))).first()
        if row is None:
            return None
        stale = row.status == "sending" and _aware(row.claimed_at) < now - timedelta(seconds=timeout_s)
        retry = row.status == "failed" and row.attempts < max_attempts
        if not (stale or retry):
            return None
        # Compare-and-set on the row as read: of two processes retrying at once, one wins.
        taken = conn.execute(update(LEDGER).where(
            LEDGER.c.id == row.id, LEDGER.c.status == row.status, LEDGER.c.attempts == row.attempts,
        ).values(status="sending", attempts=row.attempts + 1, claimed_at=now, to_addr=sub.email))  # fmt: skip
        return int(row.id) if taken.rowcount == 1 else None


def _failed(engine: Engine, row_id: int, error: str, max_attempts: int) -> str:
    with engine.begin() as conn:
        attempts = conn.execute(select(LEDGER.c.attempts).where(LEDGER.c.id == row_id)).scalar_one()
        status = "dead" if attempts >= max_attempts else "failed"
        conn.execute(update(LEDGER).where(LEDGER.c.id == row_id).values(status=status, error=error[:2000]))
    return status


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def email_of(channel: str) -> str | None:
    """The address an Apprise email channel sends to: ``mailto:a@b``, ``mailto://…?to=a@b`` or ``mailtos://…/a@b``."""
    channel = channel.strip()
    if channel.lower().startswith("mailto:") and not channel.lower().startswith("mailto://"):
        return unquote(channel[7:].split("?")[0]) or None
    parts = urlsplit(channel)
    if parts.scheme.lower() not in ("mailto", "mailtos"):
        return None
    to = parse_qs(parts.query).get("to")
    if to:
        return to[0].split(",")[0]
    path = [p for p in parts.path.split("/") if "@" in p]
    if path:
        return unquote(path[0])
    if parts.username and parts.hostname:
        return f"{unquote(parts.username)}@{parts.hostname}"
    return None


def load_report_subscriptions(engine: Engine, user_farms: Mapping[str, list[str]]) -> list[ReportSubscription]:
    """Report subscribers from the notification subscriptions (``report_frequency`` daily or weekly).

    ``user_farms`` is each user's visible farms (from the users file), so a subscription's empty farm
    list (every farm) never reaches a farm the user may not see. Reports go to the subscription's
    email channels; ``secret:NAME`` channels are not read here, so a report needs a plain mailto channel.
    """
    with engine.connect() as conn:
        subs = list_subscriptions(conn)
    out: dict[tuple[str, str, str, str], ReportSubscription] = {}
    for _, username, spec in subs:
        if not spec.enabled or spec.report_frequency == "off":
            continue
        allowed = user_farms.get(username, [])
        for farm in [f for f in (spec.farms or allowed) if f in allowed]:
            for address in filter(None, (email_of(c) for c in spec.channels)):
                sub = ReportSubscription(username, address, farm, spec.report_frequency, spec.timezone or "UTC")
                out.setdefault((sub.user, sub.email, sub.farm, sub.frequency), sub)
    return list(out.values())
