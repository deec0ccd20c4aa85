"""How the outbox hands rows to the sender through the uplink gate: by value, within the byte budget.

A mixin of :class:`edge_agent.outbox.Outbox` (it uses the outbox's connection, lock and counters);
kept here so the budget's bookkeeping sits beside the gate it serves.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..outbox_rows import ROW_OVERHEAD, Row
from .budget import MUST, decide, message_wire_size
from .gate import DAY_KEY, MONTH_KEY
from .shrink import shrink_sample

if TYPE_CHECKING:
    from .gate import UplinkGate
    from .settings import UplinkSettings

logger = logging.getLogger(__name__)


class GatedPicking:
    _db: sqlite3.Connection
    _lock: threading.RLock
    _clock: Callable[[], float]
    _charged: set[int]
    _used: int
    _wire: UplinkSettings | None
    gate: UplinkGate | None

    def _bump(self, cur: sqlite3.Cursor, name: str, by: int = 1) -> None:
        raise NotImplementedError

    def _pick(self, limit: int, inflight: set[int], commit: bool) -> list[Row]:
        """Rows by value through the budget; ``commit`` False only looks (no drops, no re-encodes, no charge)."""
        assert self.gate is not None
        gate, now = self.gate, self._clock()
        out: list[Row] = []
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                day_key, month_key, days_left = gate.keys(now)
                counters = self._counter_values(cur, day_key, month_key)
                used_day, used_month = counters.get(day_key, 0), counters.get(month_key, 0)
                # Sizes from the row, not its payload: a poll with many waiting images reads no images.
                meta = cur.execute(
                    "SELECT id, kind, value, created, wire_size, LENGTH(payload) + LENGTH(topic) FROM outbox "
                    "WHERE state = 'pending' ORDER BY value DESC, id"
                ).fetchall()
                for row_id, kind, tier, created, wire, stored in meta:
                    if len(out) >= limit:
                        break
                    if row_id in inflight:
                        continue
                    if row_id in self._charged:
                        out.append(self._row(cur, row_id))
                        continue
                    size = wire if wire is not None else stored
                    allowance = gate.allowance(used_day, used_month, days_left, now)
                    d = decide(tier, kind, size, now - created, allowance, gate.settings.hold_s)
                    row: Row | None = None
                    if d.action == "shrink" and commit:
                        row, size = self._shrink(cur, self._row(cur, row_id), d.max_bytes or 0)
                        d = decide(MUST if row else tier, "", size, now - created, allowance, gate.settings.hold_s)
                    if d.action in ("send", "shrink"):  # an uncommitted look assumes the re-encode fits
                        out.append(row or self._row(cur, row_id))
                        if commit:
                            used_day, used_month = used_day + size, used_month + size
                            self._charged.add(row_id)
                            self._bump(cur, day_key, size)
                            self._bump(cur, month_key, size)
                    elif d.action == "drop" and commit:
                        cur.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
                        self._used -= stored + ROW_OVERHEAD
                        self._bump(cur, f"budget_dropped_{kind}")
                        logger.info("uplink budget: dropped %s %d (%d bytes)", kind, row_id, size)
                cur.execute("COMMIT" if commit else "ROLLBACK")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return out

    @staticmethod
    def _row(cur: sqlite3.Cursor, row_id: int) -> Row:
        r = cur.execute(
            "SELECT id, msg_id, kind, topic, payload, created FROM outbox WHERE id = ?", (row_id,)
        ).fetchone()
        return Row(*r)

    def _shrink(self, cur: sqlite3.Cursor, row: Row, max_bytes: int) -> tuple[Row | None, int]:
        """The sample re-encoded to fit ``max_bytes`` (wire bytes) and stored so; (None, size as is) when it cannot."""
        size = message_wire_size(row.topic, row.payload, self._wire)
        smaller = shrink_sample(row.payload, max_bytes - len(row.topic.encode()))
        if smaller is None:
            return None, size
        new_size = message_wire_size(row.topic, smaller, self._wire)
        cur.execute("UPDATE outbox SET payload = ?, wire_size = ? WHERE id = ?", (smaller, new_size, row.id))
        self._used += len(smaller) - len(row.payload)
        self._bump(cur, f"budget_shrunk_{row.kind}")
        return Row(row.id, row.msg_id, row.kind, row.topic, smaller, row.created), new_size

    @staticmethod
    def _counter_values(cur: sqlite3.Cursor, *names: str) -> dict[str, int]:
        rows = cur.execute(
            f"SELECT name, value FROM counters WHERE name IN ({','.join('?' * len(names))})", names
        ).fetchall()
        return {name: int(value) for name, value in rows}

    def charge(self, nbytes: int) -> None:
        """Count bytes sent around the outbox (the retained status) against today's and the month's budget."""
        if self.gate is None:
            return
        day_key, month_key, _ = self.gate.keys(self._clock())
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            self._bump(cur, day_key, nbytes)
            self._bump(cur, month_key, nbytes)
            cur.execute("COMMIT")

    def uplink_usage(self) -> dict[str, int | None]:
        """Bytes sent today and this month, today's allowance, and rows waiting for the link or the budget."""
        if self.gate is None:
            return {}
        day_key, month_key, days_left = self.gate.keys(self._clock())
        with self._lock:
            cur = self._db.cursor()
            values = self._counter_values(cur, day_key, month_key)
            held = cur.execute("SELECT COUNT(*) FROM outbox WHERE state = 'pending'").fetchone()[0]
        today, month = values.get(day_key, 0), values.get(month_key, 0)
        allowance = self.gate.allowance(today, month, days_left, self._clock())
        return {
            "bytes_today": today,
            "bytes_month": month,
            "budget_month": self.gate.settings.budget_bytes_month,
            "allowance_today": allowance.day_bytes,
            "waiting": int(held) - len(self._charged),
        }

    def prune_uplink_counters(self, keep_days: int = 62) -> None:
        """Forget day and month byte counters older than ``keep_days``."""
        if self.gate is None:
            return
        day_key, month_key, _ = self.gate.keys(self._clock() - keep_days * 86400)
        with self._lock:
            self._db.execute("DELETE FROM counters WHERE name LIKE ? AND name < ?", (DAY_KEY + "%", day_key))
            self._db.execute("DELETE FROM counters WHERE name LIKE ? AND name < ?", (MONTH_KEY + "%", month_key))
