"""Alert rows the monitor changes: acknowledging (ingest raises and resolves them)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection

from .dialect import Dialect


def acknowledge(conn: Connection, alert_id: int, who: str, when: datetime, dialect: Dialect) -> bool:
    """Mark an alert acknowledged (the monitor's button calls this); False if it was already."""
    p = dialect.ph
    res = conn.exec_driver_sql(
        f"UPDATE alerts SET acknowledged_at = {p}, acknowledged_by = {p} WHERE id = {p} AND acknowledged_at IS NULL",
        (dialect.ts(when), who, alert_id),
    )
    return res.rowcount > 0
