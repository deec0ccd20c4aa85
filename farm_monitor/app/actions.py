"""Everything the monitor writes, each checked against the user's role and farms on the server.

Pages call these with the logged-in :class:`~farm_monitor.app.auth.User`; the check happens here,
not in the page, so a hidden button is never the only guard.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, text

from shared.ids import new_msg_id

from ..db.alerts import acknowledge
from ..db.dialect import Dialect
from .auth import PermissionDenied, User
from .layout import FarmLayout, load_layout, replace_farm, save_layout

logger = logging.getLogger(__name__)


class ActionError(Exception):
    """An action that cannot be done; the message is shown in the page."""


def _farm_of(engine: Engine, table: str, key: str, value: Any) -> str | None:
    with engine.connect() as conn:
        return conn.execute(text(f"SELECT farm_id FROM {table} WHERE {key} = :v"), {"v": value}).scalar()


def label_sample(engine: Engine, user: User, sample_msg_id: str, label: str, note: str | None = None) -> None:
    """Store ``user``'s label for a sample (who and when); the latest label is the current one."""
    user.require("label")
    label = label.strip()
    if not label or len(label) > 128:
        raise ActionError("a label needs 1 to 128 characters")
    farm = _farm_of(engine, "samples", "msg_id", sample_msg_id)
    if farm is None or not user.sees_farm(farm):
        raise PermissionDenied(f"sample {sample_msg_id} not found")  # same answer: another farm is invisible
    d = Dialect(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"INSERT INTO labels (msg_id, sample_msg_id, label, labelled_by, labelled_at, note) VALUES ({d.ph}, "
            f"{d.ph}, {d.ph}, {d.ph}, {d.ph}, {d.ph})",
            (new_msg_id(), sample_msg_id, label, user.username, d.ts(datetime.now(UTC)), note or None),
        )
    logger.info("%s labelled sample %s as %s", user.username, sample_msg_id, label)


def acknowledge_alert(engine: Engine, user: User, alert_id: int) -> bool:
    """Acknowledge with who and when; False when someone already had."""
    user.require("acknowledge")
    farm = _farm_of(engine, "alerts", "id", int(alert_id))
    if farm is None or not user.sees_farm(farm):
        raise PermissionDenied(f"alert {alert_id} not found")
    d = Dialect(engine)
    with engine.begin() as conn:
        done = acknowledge(conn, int(alert_id), user.username, datetime.now(UTC), d)
    logger.info("%s acknowledged alert %s (%s)", user.username, alert_id, "new" if done else "already")
    return done


def save_farm_layout(path: str, user: User, farm_id: str, farm_doc: Any) -> FarmLayout:
    """Replace one farm's part of the layout file (admin only)."""
    user.require("layout", farm_id)
    layout = replace_farm(load_layout(path), farm_id, farm_doc)
    save_layout(path, layout)
    logger.info("%s saved the layout of farm %s", user.username, farm_id)
    return layout
