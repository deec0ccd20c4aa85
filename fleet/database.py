"""The monitor database as fleet code opens it: a writer engine, schema migrated by the caller.

Fleet callers (the retrainer, the retrain tick) know only a URL and maybe a password, not the
monitor's config; this gives them the monitor's own engine setup (WAL, busy timeout) without it.
"""

from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from farm_monitor.db import make_engine, migrate

__all__ = ["migrate", "open_engine"]


def open_engine(url: str, password: str | None = None) -> Engine:
    """A writer engine on ``url``; ``password`` goes into a URL that has none (as ``database.password`` does)."""
    if password is not None:
        try:
            parsed = make_url(url)
        except ArgumentError:
            return make_engine(url, writer=True)  # which says what is wrong with the URL
        if parsed.password is None:
            url = parsed.set(password=password).render_as_string(hide_password=False)
    return make_engine(url, writer=True)
