"""Notification rows both rooms touch: subscriptions (the monitor edits them, ``cropwatch notify``
reads them) and an acknowledge link's one use. The delivery ledger itself is
:mod:`farm_monitor.notify.ledger`'s.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, time
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import Connection, Engine, delete, insert, select, update

from shared.ids import ID_RE

from .alerts import acknowledge
from .dialect import Dialect
from .models import NotificationDelivery, Subscription, table_of

SEVERITIES = ("info", "warning", "critical")
RULES = ("disease", "device_offline", "outbox_backlog", "sensor_health")
SECRET_PREFIX = "secret:"
_HHMM = re.compile(r"([01]\d|2[0-3]):[0-5]\d")
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*://", re.IGNORECASE)
SUBS = table_of(Subscription)
DELIVERIES = table_of(NotificationDelivery)


def channel_key(channel: str) -> str:
    """The ledger's name for a channel: changing one URL of a subscription never re-sends on the others."""
    return hashlib.sha256(channel.strip().encode()).hexdigest()[:16]


def redact_channel(channel: str) -> str:
    """What pages and logs show of a channel: its scheme (the service), never tokens or addresses."""
    channel = channel.strip()
    if channel.startswith(SECRET_PREFIX):
        return channel  # a reference names a secret, it is not one
    match = _SCHEME.match(channel)
    return f"{match.group(0)}… ({channel_key(channel)[:6]})" if match else "(not a URL)"


class SubscriptionSpec(BaseModel):
    """One subscription as a person edits it; errors name the field and what to write."""

    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=128)] = "alerts"
    enabled: bool = True
    farms: list[str] = Field(default_factory=list, description="Empty: every farm the user may see.")
    fields: list[str] = Field(default_factory=list, description="Empty: every field.")
    kinds: list[Literal["disease", "device_offline", "outbox_backlog", "sensor_health"]] = Field(default_factory=list)
    min_severity: Literal["info", "warning", "critical"] = "warning"
    channels: list[str] = Field(default_factory=list)
    timezone: str = "UTC"
    quiet_start: str | None = None
    quiet_end: str | None = None
    critical_overrides_quiet: bool = True
    report_frequency: Literal["off", "daily", "weekly"] = "off"

    @field_validator("farms", "fields")
    @classmethod
    def _ids(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if not ID_RE.fullmatch(v)]
        if bad:
            raise ValueError(f"{', '.join(bad)}: ids match [a-z0-9][a-z0-9_-]{{0,63}}")
        return value

    @field_validator("channels")
    @classmethod
    def _channels(cls, value: list[str]) -> list[str]:
        out = [c.strip() for c in value if c.strip()]
        for c in out:
            if c.startswith(SECRET_PREFIX):
                if not ID_RE.fullmatch(c.removeprefix(SECRET_PREFIX)):
                    raise ValueError(f"{c}: a secret reference is secret:NAME with NAME like telegram-alice")
            elif not _SCHEME.match(c):
                raise ValueError(
                    f"{redact_channel(c)}: a channel is an Apprise URL (mailto://, tgram://, ntfys://, json://...) "
                    "or secret:NAME"
                )
        return out

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not a time zone name (e.g. Europe/Berlin, America/Chicago)") from None
        return value

    @field_validator("quiet_start", "quiet_end")
    @classmethod
    def _hhmm(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None
        if not _HHMM.fullmatch(value):
            raise ValueError(f"{value!r}: quiet hours are HH:MM, 24-hour (22:00)")
        return value

    def quiet(self) -> tuple[time, time] | None:
        if not (self.quiet_start and self.quiet_end) or self.quiet_start == self.quiet_end:
            return None
        return time.fromisoformat(self.quiet_start), time.fromisoformat(self.quiet_end)


def spec_of(row: Any) -> SubscriptionSpec:
    return SubscriptionSpec.model_validate({k: getattr(row, k) for k in SubscriptionSpec.model_fields})


def list_subscriptions(conn: Connection, username: str | None = None) -> list[tuple[int, str, SubscriptionSpec]]:
    """(id, username, spec) of one user's subscriptions, or everyone's."""
    query = select(SUBS).order_by(SUBS.c.username, SUBS.c.id)
    if username is not None:
        query = query.where(SUBS.c.username == username)
    return [(row.id, row.username, spec_of(row)) for row in conn.execute(query)]


def save_subscription(
    engine: Engine, username: str, spec: SubscriptionSpec, now: datetime, sub_id: int | None = None
) -> int:
    """Insert, or update ``sub_id`` (which must belong to ``username``); returns the id."""
    values = {**spec.model_dump(), "username": username, "updated_at": now}
    with engine.begin() as conn:
        if sub_id is None:
            return int(conn.execute(insert(SUBS).values(**values, created_at=now).returning(SUBS.c.id)).scalar_one())
        done = conn.execute(
            update(SUBS).where(SUBS.c.id == sub_id, SUBS.c.username == username).values(**values)
        ).rowcount
        if not done:
            raise LookupError(f"subscription {sub_id} of {username} not found")
        return sub_id


def delete_subscription(engine: Engine, username: str, sub_id: int) -> bool:
    with engine.begin() as conn:
        conn.execute(delete(DELIVERIES).where(DELIVERIES.c.subscription_id == sub_id))
        return conn.execute(delete(SUBS).where(SUBS.c.id == sub_id, SUBS.c.username == username)).rowcount > 0


def owner_of(conn: Connection, sub_id: int) -> str | None:
    return conn.execute(select(SUBS.c.username).where(SUBS.c.id == sub_id)).scalar()


def use_ack_link(conn: Connection, delivery_id: int, alert_id: int, username: str, when: datetime) -> str:
    """Spend a link's one use and acknowledge: ``acknowledged``, ``already`` (someone had), or ``used``
    (this link was used before, or names a ledger row that is not its alert's and user's)."""
    d = Dialect(conn)
    p = d.ph
    spent = conn.exec_driver_sql(
        f"UPDATE notification_deliveries SET ack_used_at = {p} "
        f"WHERE id = {p} AND alert_id = {p} AND username = {p} AND ack_used_at IS NULL",
        (d.ts(when), delivery_id, alert_id, username),
    ).rowcount
    if not spent:
        return "used"
    return "acknowledged" if acknowledge(conn, alert_id, username, when, d) else "already"
