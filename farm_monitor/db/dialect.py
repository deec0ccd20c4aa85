"""The one place that knows how SQLite and PostgreSQL store a timestamp differently.

Raw SQL (ingest's hot path, the monitor's queries, fleet scoring) binds timestamps through these
functions so that a value compares correctly with what SQLAlchemy's ``DateTime`` columns stored.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine


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
