"""The on-disk outbox: every message is stored here before it is sent and stays until acknowledged.

SQLite in WAL mode with ``synchronous=FULL``: a message the agent has accepted survives a power
cut. A row leaves only when the broker acknowledged it with a success reason code; a refused row
(PUBACK reason >= 0x80, e.g. 135 not authorised) is kept, marked ``refused`` with its reason and
counted, and is retried only after a config reload (the operator fixed the ACL or the limit).

Disk budget policy: when storing a message would take the outbox over its budget, the oldest rows
of the lowest priority go first: telemetry (0), then samples (1), then detections, yields and
`uncertain` samples (2).
A message never displaces one of higher priority; if nothing of lower or equal priority is left,
the new message itself is dropped. Events (3, alerts and errors) are never dropped, even over
budget. Every drop is counted per kind. Rows older than their kind's TTL expire and are counted.

Full disk: when SQLite cannot grow the file (SQLITE_FULL), the messages of that write are dropped
and counted as ``dropped_disk_full_<kind>`` (in memory: the disk has no room for the counter; the
heartbeat reports it), instead of the exception ending in the pipeline as an uncounted loss. A
write that also marks folder files as processed is not dropped: it fails, and the files stay in
the folder to be read again once there is room.

Replay order: rows are sent in insertion order (the primary key), so messages of one kind arrive
in the order they were made. With an uplink gate (``[uplink]`` metered, budget or windows,
edge_agent/uplink/) rows go by value tier first, then insertion order, only while the link is
open; the gate's budget may re-encode a sample smaller, hold a row for a later day, or drop it
(counted as ``budget_dropped_{kind}``). Bytes sent are kept per day and month in ``counters``.

The same database holds the agent's small state: files a folder source has already processed
(marked in the same transaction that stores their results, so a crash neither loses nor repeats
an image), the sample log for the hourly and daily caps, and the sensor history for the yield model.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from shared.ids import wall_time

from .ledger import Ledger
from .outbox_rows import ROW_OVERHEAD, OutMessage, Row
from .uplink.budget import message_wire_size, value_of
from .uplink.gate import UplinkGate
from .uplink.picking import GatedPicking

logger = logging.getLogger(__name__)

__all__ = ["NEVER_DROPPED", "PRIORITY", "ROW_OVERHEAD", "OutMessage", "Outbox", "Row"]

PRIORITY = {"telemetry": 0, "sample": 1, "detection": 2, "yield": 2, "status": 3, "event": 3}
NEVER_DROPPED = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    msg_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    priority INTEGER NOT NULL,
    created REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    reason_code INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    value INTEGER NOT NULL DEFAULT 3,
    wire_size INTEGER
);
CREATE INDEX IF NOT EXISTS outbox_drop ON outbox (priority, id);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS seen_files (source TEXT NOT NULL, key TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (source, key));
CREATE TABLE IF NOT EXISTS sample_log (at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS readings (at REAL NOT NULL, quantity TEXT NOT NULL, value REAL NOT NULL);
CREATE INDEX IF NOT EXISTS readings_q ON readings (quantity, at);
"""


class Outbox(GatedPicking):
    """Thread-safe: one connection behind a lock (the writes are tiny; the fsync dominates)."""

    def __init__(
        self,
        path: str | Path,
        budget_bytes: int,
        ttl_s: dict[str, float | None] | None = None,
        clock: Callable[[], float] = wall_time,
        gate: UplinkGate | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.budget_bytes = int(budget_bytes)
        self.ttl_s = dict(ttl_s or {})
        self._clock = clock
        self._lock = threading.RLock()
        self.ledger = ledger
        # Drops that could not be written to the counters table (the disk was full).
        self._memory_counters: dict[str, int] = {}
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(outbox)")}
        # An outbox from before the uplink budget: every old row counts as must-go, sized from its payload.
        if "value" not in columns:
            self._db.execute("ALTER TABLE outbox ADD COLUMN value INTEGER NOT NULL DEFAULT 3")
        if "wire_size" not in columns:
            self._db.execute("ALTER TABLE outbox ADD COLUMN wire_size INTEGER")
        self.gate = gate
        # Sizes are counted in the device's wire encoding (the gate's settings hold it).
        self._wire = gate.settings if gate is not None else None
        # Rows whose bytes were counted when handed to the sender (not again when handed over again).
        self._charged: set[int] = set()
        self._used = self._db.execute(
            "SELECT COALESCE(SUM(LENGTH(payload) + LENGTH(topic) + ?), 0) FROM outbox", (ROW_OVERHEAD,)
        ).fetchone()[0]
        # Called after each commit that added rows (the sender wakes up instead of polling).
        self.listeners: list[Callable[[], None]] = []

    # --- writing ----------------------------------------------------------------------------

    def add(
        self,
        messages: Iterable[OutMessage],
        seen: Iterable[tuple[str, str]] = (),
        readings: Iterable[tuple[float, str, float]] = (),
        sample_at: Iterable[float] = (),
    ) -> list[str]:
        """Store messages (and the state that goes with them) in one durable transaction.

        Returns the msg_ids of messages that were dropped by the budget policy, new or old.
        """
        messages = list(messages)
        seen = list(seen)
        dropped: list[tuple[str, str]] = []
        with self._lock:
            cur = self._db.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")
                for m in messages:
                    dropped.extend(self._insert(cur, m))
                cur.executemany(
                    "INSERT OR REPLACE INTO seen_files (source, key, at) VALUES (?, ?, ?)",
                    [(s, k, self._clock()) for s, k in seen],
                )
                cur.executemany("INSERT INTO readings (at, quantity, value) VALUES (?, ?, ?)", list(readings))
                cur.executemany("INSERT INTO sample_log (at) VALUES (?)", [(t,) for t in sample_at])
                cur.execute("COMMIT")
            except BaseException as exc:
                if self._db.in_transaction:
                    cur.execute("ROLLBACK")
                self._used = self._db.execute(
                    "SELECT COALESCE(SUM(LENGTH(payload) + LENGTH(topic) + ?), 0) FROM outbox", (ROW_OVERHEAD,)
                ).fetchone()[0]
                if seen or not _disk_full(exc):
                    raise
                return self._dropped_disk_full(messages)
            if self.ledger is not None:
                gone = {msg_id for msg_id, _ in dropped}
                self.ledger.created((m.msg_id, m.kind) for m in messages if m.msg_id not in gone)
                self.ledger.dropped(dropped, "budget")
        for listener in self.listeners:
            listener()
        return [msg_id for msg_id, _ in dropped]

    def _dropped_disk_full(self, messages: list[OutMessage]) -> list[str]:
        for m in messages:
            name = f"dropped_disk_full_{m.kind}"
            self._memory_counters[name] = self._memory_counters.get(name, 0) + 1
        logger.error("outbox: the disk is full; %d new messages dropped", len(messages))
        if self.ledger is not None:
            self.ledger.dropped(((m.msg_id, m.kind) for m in messages), "disk_full")
        return [m.msg_id for m in messages]

    def _insert(self, cur: sqlite3.Cursor, m: OutMessage) -> list[tuple[str, str]]:
        priority = m.priority if m.priority is not None else PRIORITY.get(m.kind, 2)
        size = len(m.payload) + len(m.topic.encode()) + ROW_OVERHEAD
        dropped: list[tuple[str, str]] = []
        if priority < NEVER_DROPPED and self._used + size > self.budget_bytes:
            self._used -= self._size_of(cur, "state = 'held'", [])
            cur.execute("DELETE FROM outbox WHERE state = 'held'")  # delivered already: room before any drop
        if priority < NEVER_DROPPED:
            while self._used + size > self.budget_bytes:
                victim = cur.execute(
                    "SELECT id, msg_id, kind, LENGTH(payload) + LENGTH(topic) FROM outbox WHERE priority <= ? "
                    "ORDER BY priority, id LIMIT 1",
                    (priority,),
                ).fetchone()
                if victim is None:
                    self._bump(cur, f"dropped_{m.kind}")
                    logger.warning("outbox full (%d bytes): dropped new %s %s", self._used, m.kind, m.msg_id)
                    dropped.append((m.msg_id, m.kind))
                    return dropped
                cur.execute("DELETE FROM outbox WHERE id = ?", (victim[0],))
                self._used -= victim[3] + ROW_OVERHEAD
                self._bump(cur, f"dropped_{victim[2]}")
                dropped.append((victim[1], victim[2]))
                logger.warning("outbox full: dropped %s %s to make room for a %s", victim[2], victim[1], m.kind)
        cur.execute(
            "INSERT INTO outbox (msg_id, kind, topic, payload, priority, created, value, wire_size) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                m.msg_id,
                m.kind,
                m.topic,
                m.payload,
                priority,
                self._clock(),
                value_of(m.kind, m.payload),
                message_wire_size(m.topic, m.payload, self._wire),
            ),
        )
        self._used += size
        return dropped

    def _bump(self, cur: sqlite3.Cursor, name: str, by: int = 1) -> None:
        cur.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
            (name, by, by),
        )

    # --- sending ----------------------------------------------------------------------------

    def next_batch(self, after_id: int, limit: int) -> list[Row]:
        """Pending rows with id > after_id, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, msg_id, kind, topic, payload, created FROM outbox WHERE state = 'pending' AND id > ? "
                "ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [Row(*r) for r in rows]

    def acked(self, ids: Iterable[int], hold: bool = False) -> None:
        """Delivered rows: deleted, or with ``hold`` kept as ``held`` (edge_agent/held.py) until released."""
        ids = list(ids)
        if not ids:
            return
        marks = ",".join("?" * len(ids))
        with self._lock:
            cur = self._db.cursor()
            # A delete lost to a power cut only means the message is sent again (same msg_id, which
            # ingest deduplicates), so acks skip the fsync; the next FULL commit makes them durable.
            cur.execute("PRAGMA synchronous=NORMAL")
            try:
                cur.execute("BEGIN IMMEDIATE")
                if hold:
                    sizes = 0
                    cur.execute(f"UPDATE outbox SET state = 'held' WHERE id IN ({marks})", ids)
                else:
                    sizes = self._size_of(cur, f"id IN ({marks})", ids)
                if self.ledger is not None:
                    done = cur.execute(f"SELECT msg_id, kind FROM outbox WHERE id IN ({marks})", ids).fetchall()
                if not hold:
                    cur.execute(f"DELETE FROM outbox WHERE id IN ({marks})", ids)
                self._bump(cur, "sent", len(ids))
                cur.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    cur.execute("ROLLBACK")
                raise
            finally:
                cur.execute("PRAGMA synchronous=FULL")
            self._charged.difference_update(ids)
            self._used -= sizes
            if self.ledger is not None:
                self.ledger.acked(done)

    def held_ids(self) -> list[int]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT id FROM outbox WHERE state = 'held' ORDER BY id")]

    def release_held(self, ids: Iterable[int]) -> None:
        """Forget held rows: the broker has had them long enough to have written them to disk."""
        ids = list(ids)
        if not ids:
            return
        where = f"state = 'held' AND id IN ({','.join('?' * len(ids))})"
        with self._lock:
            cur = self._db.cursor()
            cur.execute("PRAGMA synchronous=NORMAL")  # losing this delete only means one more resend
            try:
                cur.execute("BEGIN IMMEDIATE")
                sizes = self._size_of(cur, where, ids)
                cur.execute(f"DELETE FROM outbox WHERE {where}", ids)
                cur.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    cur.execute("ROLLBACK")
                raise
            finally:
                cur.execute("PRAGMA synchronous=FULL")
            self._used -= sizes

    def resend_held(self, ids: Iterable[int]) -> int:
        """Put held rows back in line (the broker connection was renewed; it may have lost them)."""
        ids = list(ids)
        if not ids:
            return 0
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            n = cur.execute(
                f"UPDATE outbox SET state = 'pending' WHERE state = 'held' AND id IN ({','.join('?' * len(ids))})", ids
            ).rowcount
            self._bump(cur, "resent_after_reconnect", n)
            cur.execute("COMMIT")
        for listener in self.listeners:
            listener()
        return n

    @staticmethod
    def _size_of(cur: sqlite3.Cursor, where: str, args: list[int]) -> int:
        return int(
            cur.execute(
                f"SELECT COALESCE(SUM(LENGTH(payload) + LENGTH(topic) + {ROW_OVERHEAD}), 0) FROM outbox WHERE {where}",
                args,
            ).fetchone()[0]
        )

    # --- the uplink gate (edge_agent/uplink/) -------------------------------------------------

    def sendable(self, after_id: int, limit: int, inflight: set[int]) -> list[Row]:
        """Up to ``limit`` rows for the sender, none of ``inflight``.

        Without a gate: pending rows after ``after_id`` in insertion order. With one: nothing while
        the link is closed; else by value tier, then insertion order, each through the budget.
        """
        if self.gate is None:
            return [r for r in self.next_batch(after_id, limit + len(inflight)) if r.id not in inflight][:limit]
        if not self.gate.schedule.is_open(self._clock()):
            return []
        return self._pick(limit, inflight, commit=True)

    def has_sendable(self) -> bool:
        """Whether the sender has something to send now (shutdown waits for this, not for held rows)."""
        if self.gate is None:
            return bool(self.next_batch(0, 1))
        return self.gate.schedule.is_open(self._clock()) and bool(self._pick(1, set(), commit=False))

    def refused(self, row_id: int, reason_code: int) -> bool:
        """Mark a row refused; False if it already was (a resent copy refused again) or is gone."""
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            n = cur.execute(
                "UPDATE outbox SET state = 'refused', reason_code = ?, attempts = attempts + 1 "
                "WHERE id = ? AND state != 'refused'",
                (reason_code, row_id),
            ).rowcount
            if n:
                self._bump(cur, "refused")
            cur.execute("COMMIT")
        return bool(n)

    def requeue_refused(self) -> int:
        """Put refused rows back in line (after the operator fixed what made the broker refuse them)."""
        with self._lock:
            n = self._db.execute("UPDATE outbox SET state = 'pending' WHERE state = 'refused'").rowcount
        for listener in self.listeners:
            listener()
        return n

    def expire(self) -> dict[str, int]:
        """Delete rows older than their kind's TTL; returns counts per kind."""
        now = self._clock()
        out: dict[str, int] = {}
        expired: list[tuple[str, str]] = []
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            for kind, ttl in self.ttl_s.items():
                if ttl is None or PRIORITY.get(kind, 2) >= NEVER_DROPPED:
                    continue
                rows = cur.execute(
                    "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload) + LENGTH(topic) + ?), 0) FROM outbox "
                    "WHERE kind = ? AND created < ? AND state != 'held'",
                    (ROW_OVERHEAD, kind, now - ttl),
                ).fetchone()
                if rows[0]:
                    if self.ledger is not None:
                        ids = cur.execute(
                            "SELECT msg_id FROM outbox WHERE kind = ? AND created < ? AND state != 'held'",
                            (kind, now - ttl),
                        ).fetchall()
                        expired.extend((msg_id, kind) for (msg_id,) in ids)
                    cur.execute(
                        "DELETE FROM outbox WHERE kind = ? AND created < ? AND state != 'held'", (kind, now - ttl)
                    )
                    self._used -= rows[1]
                    self._bump(cur, f"expired_{kind}", rows[0])
                    out[kind] = rows[0]
            cur.execute("COMMIT")
            if self.ledger is not None:
                self.ledger.dropped(expired, "expired")
        for kind, n in out.items():
            logger.warning("outbox: %d %s messages expired (older than their TTL)", n, kind)
        return out

    # --- state ------------------------------------------------------------------------------

    def is_seen(self, source: str, key: str) -> bool:
        with self._lock:
            return (
                self._db.execute("SELECT 1 FROM seen_files WHERE source = ? AND key = ?", (source, key)).fetchone()
                is not None
            )

    def samples_since(self, since: float) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM sample_log WHERE at >= ?", (since,)).fetchone()[0])

    def prune_state(self, samples_keep_s: float = 2 * 86400, readings_keep_s: float = 400 * 86400) -> None:
        """Forget sample times past the daily cap's window and sensor history older than a season."""
        now = self._clock()
        with self._lock:
            self._db.execute("DELETE FROM sample_log WHERE at < ?", (now - samples_keep_s,))
            self._db.execute("DELETE FROM readings WHERE at < ?", (now - readings_keep_s,))
        self.prune_uplink_counters()

    def readings(self, quantity: str, since: float) -> list[tuple[float, float]]:
        with self._lock:
            return self._db.execute(
                "SELECT at, value FROM readings WHERE quantity = ? AND at >= ? ORDER BY at", (quantity, since)
            ).fetchall()

    def latest_reading(self, quantity: str, since: float) -> float | None:
        with self._lock:
            row = self._db.execute(
                "SELECT value FROM readings WHERE quantity = ? AND at >= ? ORDER BY at DESC LIMIT 1", (quantity, since)
            ).fetchone()
        return None if row is None else float(row[0])

    def counters(self) -> dict[str, int]:
        with self._lock:
            counts = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
            for name, n in self._memory_counters.items():
                counts[name] = counts.get(name, 0) + n
            return counts

    def stats(self) -> dict[str, float | int | None]:
        with self._lock:
            depth, oldest = self._db.execute(
                "SELECT COUNT(*), MIN(created) FROM outbox WHERE state != 'held'"
            ).fetchone()
            refused = self._db.execute("SELECT COUNT(*) FROM outbox WHERE state = 'refused'").fetchone()[0]
            held = self._db.execute("SELECT COUNT(*) FROM outbox WHERE state = 'held'").fetchone()[0]
        return {
            "depth": depth,
            "held": held,
            "oldest_age_s": None if oldest is None else max(0.0, self._clock() - oldest),
            "refused": refused,
            "bytes": self._used,
        }

    def refused_rows(self) -> list[tuple[str, str, int]]:
        with self._lock:
            return self._db.execute(
                "SELECT msg_id, kind, reason_code FROM outbox WHERE state = 'refused' ORDER BY id"
            ).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self.ledger is not None:
                self.ledger.close()


def _disk_full(exc: BaseException) -> bool:
    """SQLITE_FULL ("database or disk is full"), or the OS saying so while SQLite wrote."""
    if isinstance(exc, sqlite3.OperationalError):
        code = getattr(exc, "sqlite_errorcode", None)
        return code == sqlite3.SQLITE_FULL or "disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno == 28
