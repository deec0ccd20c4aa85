"""Engines for SQLite (WAL mode, default) and PostgreSQL, configured the same way everywhere."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from shared.errors import ConfigError


class DatabaseSettings(BaseModel):
    """``[database]`` of monitor.toml: what the database layer needs to open an engine."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(
        "sqlite:///var/cropwatch.db",
        description="SQLAlchemy URL: sqlite:///path.db (default, WAL mode) or postgresql+psycopg://user@host/db.",
    )
    password: SecretStr | None = Field(None, description="Put into a PostgreSQL URL that has none (or password_file).")
    sqlite_synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL", description="FULL: a committed (and so acknowledged) batch survives a power cut."
    )
    busy_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    timescaledb: Literal["auto", "off"] = Field(
        "auto", description="auto: make time-series tables hypertables when the timescaledb extension exists."
    )


logger = logging.getLogger(__name__)


def make_engine(settings: DatabaseSettings | str, writer: bool = False, **kwargs: Any) -> Engine:
    """An engine for ``settings.url``; SQLite gets WAL, a busy timeout and foreign keys.

    ``writer=True`` (ingest, ``cropwatch db``) makes SQLite transactions ``BEGIN IMMEDIATE``: they
    take the write lock up front, so two writers queue on the busy timeout instead of failing
    when one upgrades a read to a write. Readers (the monitor pages) keep the default, deferred
    transactions, which never block the writer in WAL mode.
    """
    if isinstance(settings, str):
        settings = DatabaseSettings(url=settings)
    try:
        url = make_url(settings.url)
    except Exception as exc:
        raise ConfigError("bad_database_url", f"database.url {settings.url!r} is not a SQLAlchemy URL: {exc}") from exc
    if settings.password is not None and url.password is None:
        url = url.set(password=settings.password.get_secret_value())
    backend = url.get_backend_name()
    if backend == "sqlite":
        database = url.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": settings.busy_timeout_s}, **kwargs)
        synchronous = settings.sqlite_synchronous

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # pysqlite's own transaction handling skips BEGIN before DDL; we issue BEGIN ourselves.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={synchronous}")
            cur.execute(f"PRAGMA busy_timeout={int(settings.busy_timeout_s * 1000)}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        begin = "BEGIN IMMEDIATE" if writer else "BEGIN"

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql(begin)

        return engine
    if backend == "postgresql":
        kwargs.setdefault("pool_pre_ping", True)
        return create_engine(url, **kwargs)
    raise ConfigError(
        "bad_database_url", f"database.url uses {backend!r}; use sqlite:///path.db or postgresql+psycopg://..."
    )
