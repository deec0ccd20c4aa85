"""The read layer's access to the database: dialect differences and times read back as UTC."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy import Engine, bindparam, text

from ..db.dialect import bind_timestamp, time_bucket


class Sql:
    """Dialect differences: time parameters and day/hour buckets (both return ISO text)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sqlite = engine.dialect.name == "sqlite"

    def ts(self, value: datetime) -> Any:
        return bind_timestamp(self.engine, value)

    def bucket(self, column: str, unit: str) -> str:
        return time_bucket(self.engine, column, unit)

    def frame(self, sql: str, params: dict[str, Any] | None = None, expanding: tuple[str, ...] = ()) -> pd.DataFrame:
        stmt = text(sql)
        if expanding:
            stmt = stmt.bindparams(*(bindparam(name, expanding=True) for name in expanding))
        with self.engine.connect() as conn:
            result = conn.execute(stmt, params or {})
            return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def to_utc(series: pd.Series) -> pd.Series:
    """SQLite returns naive UTC text, PostgreSQL aware datetimes: both become aware UTC."""
    return pd.to_datetime(series, utc=True, format="mixed")
