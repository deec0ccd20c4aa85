"""The one place that knows how SQLite and PostgreSQL differ for the raw SQL we write.

Raw SQL (ingest's hot path, the monitor's queries, fleet scoring) binds timestamps through these
functions so that a value compares correctly with what SQLAlchemy's ``DateTime`` columns stored,
and builds its ``INSERT`` column lists from the ORM tables in :mod:`farm_monitor.db.models`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Table

from .models import TABLES


def sqlite_timestamp(value: datetime) -> str:
    """SQLAlchemy's SQLite ``DateTime`` storage format, in UTC (naive text sorts as time)."""
    if value.tzinfo is UTC:  # what the shared schemas produce
        value = value.replace(tzinfo=None)
    elif value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(" ", "microseconds")


def bind_timestamp(bind: Engine | Connection | str, value: datetime) -> Any:
    """``value`` as a bound parameter for the database behind ``bind`` (an engine, connection or dialect name)."""
    name = bind if isinstance(bind, str) else bind.dialect.name
    return sqlite_timestamp(value) if name == "sqlite" else value


def time_bucket(bind: Engine | Connection | str, column: str, unit: str) -> str:
    """SQL for ``column``'s UTC day (``unit`` "day") or hour as ISO text, the same on both databases."""
    name = bind if isinstance(bind, str) else bind.dialect.name
    if name == "sqlite":
        return f"substr({column}, 1, {10 if unit == 'day' else 13})"
    fmt = "YYYY-MM-DD" if unit == "day" else 'YYYY-MM-DD"T"HH24'
    return f"to_char({column} AT TIME ZONE 'UTC', '{fmt}')"


def insert_columns(table: Table | str) -> tuple[str, ...]:
    """The columns an ``INSERT`` names, in the table's order: all but an autoincrement key."""
    t = TABLES[table] if isinstance(table, str) else table
    return tuple(c.name for c in t.columns if not (c.primary_key and c.autoincrement is True))


def _identity(value: Any) -> Any:
    return value


class Dialect:
    """Placeholders and value conversion for one database backend, for DB-API (``exec_driver_sql``) SQL."""

    def __init__(self, bind: Engine | Connection) -> None:
        self.name = bind.dialect.name
        self.ph = "?" if bind.dialect.paramstyle == "qmark" else "%s"
        sqlite = self.name == "sqlite"
        self.ts: Callable[[datetime], Any] = sqlite_timestamp if sqlite else _identity
        self.date: Callable[[date], Any] = date.isoformat if sqlite else _identity

    def insert_ignore(self, table: Table | str, columns: tuple[str, ...] | None = None) -> str:
        """``INSERT ... ON CONFLICT DO NOTHING`` of ``columns`` (default: :func:`insert_columns`)."""
        name = table if isinstance(table, str) else table.name
        cols = columns or insert_columns(table)
        marks = ", ".join([self.ph] * len(cols))
        # No conflict target: any unique key (msg_id, digest, the open-alert index) makes a repeat a no-op.
        return f"INSERT INTO {name} ({', '.join(cols)}) VALUES ({marks}) ON CONFLICT DO NOTHING"
