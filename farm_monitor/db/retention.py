"""Retention per table (``cropwatch db prune`` and ingest's periodic job) and database size."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import Engine, inspect, text

from .dialect import Dialect
from .models import message_tables

# Tables that retention may prune, with the column that dates a row (every device message table: observed_at).
RETENTION_TABLES: dict[str, str] = {
    **{t.name: "observed_at" for t in message_tables()},
    "dead_letters": "received_at",
    "alerts": "resolved_at",
}


def _default_retention() -> dict[str, int]:
    return {
        "detections": 730,
        "yield_estimates": 1095,
        "telemetry": 400,
        "radio_links": 400,
        "samples": 90,
        "status_reports": 30,
        "gateway_status": 30,
        "events": 180,
        "dead_letters": 30,
        "alerts": 365,
    }


class RetentionSettings(BaseModel):
    """``[retention]`` of monitor.toml; the table names are checked against the tables retention knows."""

    model_config = ConfigDict(extra="forbid")
    days: dict[str, Annotated[int, Field(ge=1)]] = Field(
        default_factory=_default_retention, description="Days to keep, per table; a table left out is kept forever."
    )
    interval_s: Annotated[float, Field(ge=0)] = Field(3600.0, description="Periodic prune in ingest; 0 turns it off.")
    keep_labelled_samples: bool = Field(True, description="Labelled samples are training data: never pruned.")
    chunk_rows: Annotated[int, Field(ge=100)] = 10_000

    @field_validator("days")
    @classmethod
    def _known_tables(cls, value: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(value) - set(RETENTION_TABLES))
        if unknown:
            raise ValueError(f"no retention for {', '.join(unknown)}; tables: {', '.join(RETENTION_TABLES)}")
        return value


logger = logging.getLogger(__name__)


def prune(engine: Engine, settings: RetentionSettings, now: datetime, dry_run: bool = False) -> dict[str, int]:
    """Delete rows older than each table's retention, in chunks so writers are never blocked long.

    Returns rows deleted (or, with ``dry_run``, rows that would be) per table.
    """
    d = Dialect(engine)
    p = d.ph
    out: dict[str, int] = {}
    for table, days in settings.days.items():
        column = RETENTION_TABLES[table]
        cutoff = d.ts(now - timedelta(days=days))
        where = f"{column} < {p}"
        if table == "alerts":
            where = f"resolved_at IS NOT NULL AND {where}"
        if table == "samples" and settings.keep_labelled_samples:
            where += " AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.sample_msg_id = samples.msg_id)"
        key = "id" if table in ("alerts", "dead_letters") else "msg_id"
        if dry_run:
            with engine.connect() as conn:
                out[table] = conn.exec_driver_sql(f"SELECT COUNT(*) FROM {table} WHERE {where}", (cutoff,)).scalar_one()
            continue
        deleted = 0
        # Chunked by key so one prune of a year's backlog does not hold the write lock for minutes.
        chunk = (
            f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} WHERE {where} LIMIT {settings.chunk_rows})"
        )
        while True:
            with engine.begin() as conn:
                n = conn.exec_driver_sql(chunk, (cutoff,)).rowcount
            deleted += n
            if n < settings.chunk_rows:
                break
        out[table] = deleted
        if deleted:
            logger.info("pruned %d rows from %s older than %d days", deleted, table, days)
    return out


@dataclass
class TableSize:
    table: str
    rows: int
    bytes: int | None


def database_size(engine: Engine) -> tuple[int, list[TableSize]]:
    """Total bytes on disk (SQLite: file + WAL; PostgreSQL: this schema's tables) and per table."""
    tables = sorted(inspect(engine).get_table_names())
    sizes: list[TableSize] = []
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            per_table: dict[str, int] = {}
            try:
                for name, size in conn.exec_driver_sql("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"):
                    per_table[name] = int(size)
            except Exception:  # dbstat is a compile-time option of SQLite
                logger.debug("sqlite dbstat not available; per-table bytes unknown")
            for t in tables:
                rows = conn.exec_driver_sql(f'SELECT COUNT(*) FROM "{t}"').scalar_one()
                sizes.append(TableSize(t, rows, per_table.get(t) if per_table else None))
            path = engine.url.database or ""
            total = 0
            for suffix in ("", "-wal", "-shm"):
                if path and os.path.exists(path + suffix):
                    total += os.path.getsize(path + suffix)
            return total, sizes
        for t in tables:
            rows = conn.exec_driver_sql(f'SELECT COUNT(*) FROM "{t}"').scalar_one()
            size = conn.execute(text("SELECT pg_total_relation_size(CAST(:t AS regclass))"), {"t": t}).scalar_one()
            sizes.append(TableSize(t, rows, int(size)))
        return sum(s.bytes or 0 for s in sizes), sizes
