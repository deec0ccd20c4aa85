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

from .. import acklink
from ..db.alerts import acknowledge
from ..db.dialect import Dialect
from ..db.notifications import (
    SECRET_PREFIX,
    SubscriptionSpec,
    delete_subscription,
    owner_of,
    save_subscription,
    use_ack_link,
)
from .auth import PermissionDenied, User, UsersFile
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


def _may_edit_subscriptions_of(user: User, owner: str) -> None:
    if owner != user.username and not user.can("users"):
        raise PermissionDenied(f"{user.username} may edit only their own notifications")


def save_subscription_for(
    engine: Engine, user: User, owner: User, spec: SubscriptionSpec, sub_id: int | None = None
) -> int:
    """Save ``owner``'s subscription: people edit their own, admins anyone's. Farms must be the owner's,
    and ``secret:`` channel references (files on the notify host) are for admins to set."""
    _may_edit_subscriptions_of(user, owner.username)
    hidden = [f for f in spec.farms if not owner.sees_farm(f)]
    if hidden:
        raise PermissionDenied(f"{owner.username} has no access to farm(s) {', '.join(hidden)}")
    if not user.can("users") and any(c.startswith(SECRET_PREFIX) for c in spec.channels):
        raise PermissionDenied("secret:NAME channels are set by an admin; paste the Apprise URL instead")
    if sub_id is not None:
        with engine.connect() as conn:
            if owner_of(conn, sub_id) != owner.username:
                raise PermissionDenied(f"subscription {sub_id} not found")
    saved = save_subscription(engine, owner.username, spec, datetime.now(UTC), sub_id)
    logger.info("%s saved subscription %s of %s", user.username, saved, owner.username)
    return saved


def delete_subscription_for(engine: Engine, user: User, owner: str, sub_id: int) -> bool:
    _may_edit_subscriptions_of(user, owner)
    done = delete_subscription(engine, owner, sub_id)
    logger.info("%s deleted subscription %s of %s", user.username, sub_id, owner)
    return done


def acknowledge_by_link(engine: Engine, users: UsersFile, secret: str | None, token: str) -> str:
    """Acknowledge from a notification's signed link, as the user it was sent to; the message to show.

    Checked here, on the server: signature, expiry, the link's one use, and that the user still exists,
    may acknowledge and sees the alert's farm. Refusals raise :class:`ActionError`.
    """
    if secret is None:
        raise ActionError("acknowledge links are off on this monitor (notify.ack_secret is not set)")
    now = datetime.now(UTC)
    try:
        claim = acklink.verify(secret, token, now)
    except acklink.AckLinkError as exc:
        logger.warning("refused an acknowledge link: %s", exc.reason)
        raise ActionError(str(exc)) from None
    user = users.get(claim.username)
    if user is None or not user.can("acknowledge"):
        raise ActionError(f"{claim.username} may no longer acknowledge alerts")
    farm = _farm_of(engine, "alerts", "id", claim.alert_id)
    if farm is None or not user.sees_farm(farm):
        raise ActionError(f"alert {claim.alert_id} not found")
    with engine.begin() as conn:
        outcome = use_ack_link(conn, claim.delivery_id, claim.alert_id, claim.username, now)
    logger.info("acknowledge link of %s for alert %s: %s", claim.username, claim.alert_id, outcome)
    if outcome == "used":
        raise ActionError("this acknowledge link was already used; open the Alerts page to see the alert")
    if outcome == "already":
        return f"Alert #{claim.alert_id} had already been acknowledged."
    return f"Alert #{claim.alert_id} acknowledged as {claim.username}."


def save_farm_layout(path: str, user: User, farm_id: str, farm_doc: Any) -> FarmLayout:
    """Replace one farm's part of the layout file (admin only)."""
    user.require("layout", farm_id)
    layout = replace_farm(load_layout(path), farm_id, farm_doc)
    save_layout(path, layout)
    logger.info("%s saved the layout of farm %s", user.username, farm_id)
    return layout
