"""Streamlit plumbing shared by the pages: config, engine, the logged-in user, cached queries, farm picker.

The config path comes from ``CROPWATCH_CONFIG`` (set by ``cropwatch monitor``). The session
holds only the user name; role and farms are re-read from the users file on every run, so removing
a user or changing a role takes effect at once.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

import streamlit as st
from sqlalchemy import Engine
from streamlit.runtime.caching.cache_utils import CachedFunc

from shared.config import load_config
from shared.display_names import display_name

from ..config import MonitorConfig
from ..db import make_engine
from . import delivery_queries, queries as q
from .auth import AuthError, User, UsersFile
from .layout import FarmLayout, LayoutError, load_layout

logger = logging.getLogger(__name__)

CONFIG_ENV = "CROPWATCH_CONFIG"
SESSION_USER = "cw_username"
T = TypeVar("T")


@st.cache_resource(show_spinner=False)
def _config(path: str | None) -> MonitorConfig:
    return load_config(MonitorConfig, path)


def config() -> MonitorConfig:
    return _config(os.environ.get(CONFIG_ENV) or None)


@st.cache_resource(show_spinner=False)
def _engine(url: str) -> Engine:
    # keyed by URL; built from the settings so database.password(_file) applies
    settings = config().database
    return make_engine(settings if settings.url == url else url)


def engine() -> Engine:
    return _engine(config().database.url)


def users() -> UsersFile:
    return UsersFile(config().app.users_file)


def current_user() -> User | None:
    name = st.session_state.get(SESSION_USER)
    if not name:
        return None
    try:
        return users().get(name)
    except AuthError as exc:
        st.error(str(exc))
        return None


def require_user() -> User:
    """The logged-in user, or stop the page with a pointer to the login page."""
    user = current_user()
    if user is None:
        st.warning("Please log in first.")
        st.stop()
    assert user is not None
    return user


class CachedQuery(Generic[T]):
    """``fn(sql, ...)`` cached per database URL and arguments for ``app.cache_ttl_s`` seconds."""

    def __init__(self, fn: Callable[..., T]) -> None:
        self.fn = fn
        self._runners: dict[float, CachedFunc[..., T]] = {}
        functools.update_wrapper(self, fn)

    def _runner(self) -> CachedFunc[..., T]:
        ttl = config().app.cache_ttl_s
        if ttl not in self._runners:
            fn = self.fn

            def run(url: str, *args: Any, **kwargs: Any) -> T:
                return fn(q.Sql(_engine(url)), *args, **kwargs)

            # Streamlit keys a cache on the function's qualified name and source: make it per query.
            run.__qualname__ = f"cached_{fn.__name__}"
            self._runners[ttl] = st.cache_data(ttl=timedelta(seconds=ttl), show_spinner=False, max_entries=512)(run)
        return self._runners[ttl]

    def __call__(self, *args: Any, **kwargs: Any) -> T:
        return self._runner()(config().database.url, *args, **kwargs)

    def clear(self) -> None:
        for runner in self._runners.values():
            runner.clear()


# The modules whose functions are queries; :mod:`.queries` re-exports the others' queries.
QUERY_MODULES = frozenset({q.__name__, delivery_queries.__name__})


class _Queries:
    """The cached read layer: ``Data.<name>`` is :mod:`.queries`' ``<name>``, cached per database and arguments.

    Each query becomes its :class:`CachedQuery` on first use, so a new query needs no line here.
    """

    def __init__(self) -> None:
        self._cached: dict[str, CachedQuery[Any]] = {}

    def __getattr__(self, name: str) -> CachedQuery[Any]:
        cached = self._cached.get(name)
        if cached is None:
            fn = getattr(q, name, None)
            if not (inspect.isfunction(fn) and fn.__module__ in QUERY_MODULES and not name.startswith("_")):
                raise AttributeError(f"{q.__name__} has no query {name!r}")
            cached = self._cached.setdefault(name, CachedQuery(fn))  # setdefault: two sessions, one cache
        return cached


Data = _Queries()


def clear_after_write() -> None:
    """A write (label, acknowledgement) must show at once, not after the TTL."""
    for fn in (Data.samples, Data.alerts, Data.kpis):
        fn.clear()


def layout() -> FarmLayout:
    try:
        return load_layout(config().app.farm_file)
    except LayoutError as exc:
        st.error(f"The farm layout file cannot be read: {exc}. An admin can fix it on the Farm layout page.")
        return FarmLayout()


def minute_now() -> datetime:
    """Now, rounded down to the minute, so cached queries keyed on time are reused within a minute."""
    return datetime.now(UTC).replace(second=0, microsecond=0)


def day_start(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def pick_farm(user: User, key: str = "farm") -> str | None:
    """The farm to show, chosen among the user's farms only (in the sidebar, remembered across pages)."""
    known = sorted(set(layout().farms()) | set(Data.farms_with_devices()))
    farms = user.visible_farms(known)
    if not farms:
        if user.role == "admin":
            st.info(
                "No farms yet. Start an agent (`cropwatch agent --config agent.toml`, see docs/edge-agent.md) "
                "and `cropwatch ingest`, or add fields on the Farm layout page."
            )
        else:
            st.info("No farm data for your account yet. Ask an admin to give you access to a farm.")
        return None
    chosen = st.session_state.get("cw_farm")
    index = farms.index(chosen) if chosen in farms else 0
    farm = st.sidebar.selectbox("Farm", farms, index=index, key=f"cw_farm_select_{key}")
    st.session_state["cw_farm"] = farm
    return farm


def field_ids(farm: str, lay: FarmLayout) -> list[str]:
    """Fields from the layout plus any field that reported detections this week but is not in it."""
    fields = [f.properties.field_id for f in lay.for_farm(farm).fields]
    since = minute_now() - timedelta(days=7)
    extra = [f for f in Data.field_risk(farm, Data.device_ids(farm), since)["field_id"] if f and f not in fields]
    return fields + sorted(extra)


def guarded(page: Callable[[], None]) -> None:
    """Run a page; an unexpected error is shown as a message, never a traceback."""
    try:
        page()
    except Exception as exc:
        if type(exc).__name__ in ("StopException", "RerunException"):
            raise  # Streamlit's own control flow (st.stop, st.rerun, st.switch_page)
        logger.exception("page failed")
        st.error(f"Something went wrong on this page ({type(exc).__name__}: {exc}). It was logged; try again.")


def dt(value: Any) -> str:
    try:
        return str(value.strftime("%Y-%m-%d %H:%M UTC"))
    except (AttributeError, ValueError):
        return "—"


def class_name(label: Any) -> str:
    """What people read for a class id (``Apple · Cedar apple rust``): the published model's display-name
    table, else the shared rule for any label; a missing label reads as ``?``."""
    if not isinstance(label, str) or not label:
        return "?"
    return display_name(label, Data.display_names())
