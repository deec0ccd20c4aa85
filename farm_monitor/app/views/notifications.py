"""Notifications: each person's subscriptions (farms, fields, kinds, severity, channels, quiet hours,
report frequency) and the deliveries that failed for good. People edit their own; admins anyone's."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from pydantic import ValidationError

from farm_monitor.app.actions import delete_subscription_for, save_subscription_for
from farm_monitor.app.auth import AuthError, User
from farm_monitor.app.ui import Data, engine, guarded, layout, require_user, users
from farm_monitor.db.notifications import RULES, SEVERITIES, SubscriptionSpec, list_subscriptions, redact_channel


def _table(subs: list[tuple[int, str, SubscriptionSpec]]) -> pd.DataFrame:
    return pd.DataFrame([
        {"#": sid, "name": s.name, "on": s.enabled, "farms": ", ".join(s.farms) or "all",
         "fields": ", ".join(s.fields) or "all", "kinds": ", ".join(s.kinds) or "all", "min severity": s.min_severity,
         "channels": "\n".join(redact_channel(c) for c in s.channels),
         "quiet": f"{s.quiet_start}–{s.quiet_end} {s.timezone}" if s.quiet() else "—", "report": s.report_frequency}
        for sid, _, s in subs
    ])  # fmt: skip


def _form(user: User, owner: User, current: tuple[int, SubscriptionSpec] | None) -> None:
    spec = current[1] if current else SubscriptionSpec()
    known = sorted(set(layout().farms()) | set(Data.farms_with_devices()) | set(spec.farms))
    farms_choice = owner.visible_farms(known)
    with st.form("sub_form"):
        c = st.columns(3)
        name = c[0].text_input("Name", spec.name)
        enabled = c[1].checkbox("Enabled", spec.enabled)
        min_sev = c[2].selectbox("Minimum severity", SEVERITIES, index=SEVERITIES.index(spec.min_severity))
        farms = st.multiselect("Farms (none: all of yours)", farms_choice, [f for f in spec.farms if f in farms_choice])
        fields = st.text_input("Fields (comma-separated ids; empty: all)", ", ".join(spec.fields))
        kinds = st.multiselect("Alert kinds (none: all)", RULES, spec.kinds)
        keep = st.multiselect(
            "Channels kept", spec.channels, spec.channels, format_func=redact_channel,
            help="Channel URLs hold tokens and addresses: they are never shown again after saving.",
        )  # fmt: skip
        new = st.text_area(
            "Add channels (Apprise URLs, one per line)",
            placeholder="mailto://user:app-password@gmail.com\ntgram://BOT_TOKEN/CHAT_ID\nntfys://ntfy.sh/my-topic",
        )
        q = st.columns(4)
        tz = q[0].text_input("Time zone", spec.timezone)
        q_start = q[1].text_input("Quiet from (HH:MM)", spec.quiet_start or "")
        q_end = q[2].text_input("Quiet until (HH:MM)", spec.quiet_end or "")
        override = q[3].checkbox("Critical alerts ignore quiet hours", spec.critical_overrides_quiet)
        report = st.selectbox("Farm report", ["off", "daily", "weekly"], index=["off", "daily", "weekly"].index(
            spec.report_frequency))  # fmt: skip
        if not st.form_submit_button("Save subscription"):
            return
    try:
        saved = SubscriptionSpec(
            name=name, enabled=enabled, farms=farms, fields=[f.strip() for f in fields.split(",") if f.strip()],
            kinds=kinds, min_severity=min_sev, channels=keep + new.splitlines(), timezone=tz.strip() or "UTC",
            quiet_start=q_start.strip() or None, quiet_end=q_end.strip() or None,
            critical_overrides_quiet=override, report_frequency=report,
        )  # fmt: skip
        sid = save_subscription_for(engine(), user, owner, saved, current[0] if current else None)
    except ValidationError as exc:
        st.error("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
    except AuthError as exc:
        st.error(str(exc))
    else:
        st.success(f"Saved subscription #{sid}.")
        st.rerun()


def render() -> None:
    user = require_user()
    st.title("Notifications")
    st.caption("Alerts reach you on the channels you add here (email, Telegram, ntfy, Signal, Slack, webhooks: "
               "any Apprise URL), once per alert; escalations when nobody acknowledges; resolved notices.")  # fmt: skip
    owner = user
    if user.can("users"):
        names = [u.username for u in users().list()]
        who = st.selectbox("Whose notifications", names, index=names.index(user.username) if user.username in names
                           else 0, key="nt_owner")  # fmt: skip
        owner = users().get(who) or user
    with engine().connect() as conn:
        subs = list_subscriptions(conn, owner.username)
    if subs:
        st.dataframe(_table(subs), hide_index=True, width="stretch")
    else:
        st.info(f"{owner.username} has no subscriptions yet: add one below.")
    options = {"New subscription": None, **{f"#{sid} {s.name}": (sid, s) for sid, _, s in subs}}
    pick = st.selectbox("Edit", list(options), key="nt_pick")
    _form(user, owner, options[pick])
    chosen = options[pick]
    if chosen is not None and st.button("Delete this subscription", key="nt_delete"):
        delete_subscription_for(engine(), user, owner.username, chosen[0])
        st.rerun()
    st.subheader("Undeliverable")
    dead = Data.notification_problems(None if user.can("users") else user.username)
    if dead.empty:
        st.success("Every notification was delivered or is still being retried.")
    else:
        st.warning(f"{len(dead)} notification(s) failed after every retry: check the channel URLs.")
        st.dataframe(dead, hide_index=True, width="stretch")


guarded(render)
