"""Alerts: list and filter; agronomists and admins acknowledge (who, when)."""

from __future__ import annotations

import streamlit as st

from farm_monitor.app.actions import acknowledge_alert
from farm_monitor.app.auth import PermissionDenied
from farm_monitor.app.ui import Data, clear_after_write, engine, guarded, pick_farm, require_user

RULES = ["disease", "device_offline", "outbox_backlog"]
SEVERITIES = ["critical", "warning", "info"]


def render() -> None:
    user = require_user()
    st.title("Alerts")
    farm = pick_farm(user)
    if farm is None:
        return
    c = st.columns(3)
    open_only = c[0].toggle("Open only", value=True, key="al_open")
    rules = c[1].multiselect("Rule", RULES, key="al_rules")
    severities = c[2].multiselect("Severity", SEVERITIES, key="al_sev")
    df = Data.alerts(farm, open_only, rules, severities)
    if df.empty:
        st.success("No alerts match." if (rules or severities or not open_only) else "No open alerts. All quiet.")
        return
    st.dataframe(
        df.rename(columns={"id": "#"}), hide_index=True, width="stretch",
        column_config={"message": st.column_config.TextColumn(width="large")},
    )  # fmt: skip
    if not user.can("acknowledge"):
        st.caption("Read-only: acknowledging alerts is for agronomists and admins.")
        return
    pending = df[df["acknowledged_at"].isna()]
    if pending.empty:
        return
    labels = {f"#{r.id} {r.message}"[:120]: int(r.id) for r in pending.itertuples()}
    chosen = st.multiselect("Acknowledge", list(labels), key="al_ack_pick")
    if st.button("Acknowledge selected", key="al_ack", disabled=not chosen):
        try:
            done = sum(acknowledge_alert(engine(), user, labels[c]) for c in chosen)
        except PermissionDenied as exc:
            st.error(str(exc))
        else:
            clear_after_write()
            st.toast(f"Acknowledged {done} alert(s)")
            st.rerun()


guarded(render)
