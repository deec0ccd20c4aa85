"""The delivery ledger (``notification_deliveries``): rows are planned idempotently, claimed with a
lease, and finished by the claimer only.

Planning inserts with ON CONFLICT DO NOTHING on the unique key (alert, subscription, channel,
event), so any number of notify processes plan the same rows once. Claiming moves due rows to
``sending`` inside one transaction: PostgreSQL ``SELECT ... FOR UPDATE SKIP LOCKED`` lets two
processes take disjoint rows; SQLite's writer engine (BEGIN IMMEDIATE) lets one writer in at a time.
A process killed mid-send leaves its row ``sending``; when the lease runs out another process takes
it over and sends again (at-least-once inside that window: a lost alert is worse than a repeat).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, func, or_, select, update

from ..db.dialect import Dialect
from ..db.notifications import DELIVERIES as D

LEDGER_COLUMNS = (
    "alert_id", "subscription_id", "channel_key", "event", "username", "state", "attempts", "created_at",
    "next_attempt_at",
)  # fmt: skip


def utc(value: datetime) -> datetime:
    """SQLite hands timestamps back naive (they are stored in UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class Planned:
    alert_id: int
    subscription_id: int
    channel_key: str
    event: str
    username: str


@dataclass(frozen=True)
class Claimed:
    id: int
    alert_id: int
    subscription_id: int
    channel_key: str
    event: str
    username: str
    attempts: int


def known(conn: Connection, alert_ids: list[int]) -> dict[tuple[int, int, str, str], str]:
    """State of every ledger row of these alerts, by its unique key."""
    out: dict[tuple[int, int, str, str], str] = {}
    for i in range(0, len(alert_ids), 500):
        rows = conn.execute(
            select(D.c.alert_id, D.c.subscription_id, D.c.channel_key, D.c.event, D.c.state).where(
                D.c.alert_id.in_(alert_ids[i : i + 500])
            )
        )
        for a, s, c, e, state in rows:
            out[(a, s, c, e)] = state
    return out


def plan(conn: Connection, rows: list[Planned], now: datetime) -> int:
    """Insert what is not there yet; returns how many rows this call added."""
    if not rows:
        return 0
    d = Dialect(conn)
    sql = d.insert_ignore("notification_deliveries", LEDGER_COLUMNS)
    ts = d.ts(now)
    added = 0
    for r in rows:
        params = (r.alert_id, r.subscription_id, r.channel_key, r.event, r.username, "pending", 0, ts, ts)
        added += conn.exec_driver_sql(sql, params).rowcount
    return added


def claim(conn: Connection, worker: str, now: datetime, lease_s: float, limit: int = 20) -> list[Claimed]:
    """Take up to ``limit`` due rows (and rows whose claimer's lease ran out) for ``worker``."""
    due = or_(
        and_(D.c.state == "pending", D.c.next_attempt_at <= now),
        and_(D.c.state == "sending", D.c.claimed_until < now),
    )
    query = select(D.c.id).where(due).order_by(D.c.id).limit(limit)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    ids = list(conn.execute(query).scalars())
    if not ids:
        return []
    conn.execute(
        update(D)
        .where(D.c.id.in_(ids))
        .values(state="sending", claimed_by=worker, claimed_until=now + timedelta(seconds=lease_s),
                attempts=D.c.attempts + 1)
    )  # fmt: skip
    rows = conn.execute(
        select(D.c.id, D.c.alert_id, D.c.subscription_id, D.c.channel_key, D.c.event, D.c.username, D.c.attempts)
        .where(D.c.id.in_(ids))
        .order_by(D.c.id)
    )
    return [Claimed(*row) for row in rows]


def renew(conn: Connection, row_id: int, worker: str, now: datetime, lease_s: float) -> bool:
    """Extend this worker's claim right before sending; False when the lease ran out and another took it.

    A batch is claimed at once but sent one by one: without this, a slow batch's last rows could
    expire while still waiting their turn and be sent by another process too.
    """
    res = conn.execute(
        update(D).where(D.c.id == row_id, D.c.claimed_by == worker, D.c.state == "sending")
        .values(claimed_until=now + timedelta(seconds=lease_s))
    )  # fmt: skip
    return res.rowcount > 0


def finish(conn: Connection, row_id: int, worker: str, **values: Any) -> bool:
    """Set ``values`` on a row this worker still holds; False when its lease was lost to another."""
    values.setdefault("claimed_by", None)
    values.setdefault("claimed_until", None)
    res = conn.execute(
        update(D).where(D.c.id == row_id, D.c.claimed_by == worker, D.c.state.in_(("sending", "digesting")))
        .values(**values)
    )  # fmt: skip
    return res.rowcount > 0


def sent_since(conn: Connection, subscription_id: int, channel: str, since: datetime) -> int:
    """Messages that went out on a channel since ``since``: single sends plus digests (one per send time)."""
    where = (D.c.subscription_id == subscription_id, D.c.channel_key == channel, D.c.sent_at >= since)
    single = conn.execute(select(func.count()).where(*where, D.c.state == "sent")).scalar_one()
    digests = conn.execute(select(func.count(func.distinct(D.c.sent_at))).where(*where, D.c.state == "digested"))
    return int(single) + int(digests.scalar_one())


def has_held(conn: Connection, subscription_id: int, channel: str) -> bool:
    row = conn.execute(
        select(D.c.id).where(D.c.subscription_id == subscription_id, D.c.channel_key == channel,
                             D.c.state.in_(("held", "digesting"))).limit(1)
    ).first()  # fmt: skip
    return row is not None


def held_channels(conn: Connection, now: datetime) -> list[tuple[int, str]]:
    """(subscription, channel) pairs with held rows; expired digest claims go back to held first."""
    conn.execute(
        update(D).where(D.c.state == "digesting", D.c.claimed_until < now)
        .values(state="held", claimed_by=None, claimed_until=None)
    )  # fmt: skip
    rows = conn.execute(select(D.c.subscription_id, D.c.channel_key).where(D.c.state == "held").distinct())
    return [(int(s), str(c)) for s, c in rows]


def claim_held(
    conn: Connection, subscription_id: int, channel: str, worker: str, now: datetime, lease_s: float
) -> list[Claimed]:
    where = (D.c.subscription_id == subscription_id, D.c.channel_key == channel, D.c.state == "held")
    conn.execute(
        update(D).where(*where).values(state="digesting", claimed_by=worker,
                                      claimed_until=now + timedelta(seconds=lease_s))
    )  # fmt: skip
    rows = conn.execute(
        select(D.c.id, D.c.alert_id, D.c.subscription_id, D.c.channel_key, D.c.event, D.c.username, D.c.attempts)
        .where(D.c.subscription_id == subscription_id, D.c.channel_key == channel, D.c.state == "digesting",
               D.c.claimed_by == worker)
        .order_by(D.c.id)
    )  # fmt: skip
    return [Claimed(*row) for row in rows]
