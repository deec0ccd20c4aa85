"""Devices: the fleet table (status since, heartbeat, next contact, uplink bytes, health, outbox, drops, models)."""

from __future__ import annotations

import streamlit as st

from farm_monitor.app.ui import Data, config, guarded, layout, minute_now, pick_farm, require_user


def render() -> None:
    user = require_user()
    st.title("Devices")
    farm = pick_farm(user)
    if farm is None:
        return
    fleet = Data.devices(farm, minute_now(), config().alerts.device_offline.after_s)
    placed = {d.properties.device_id for d in layout().for_farm(farm).devices}
    if fleet.empty:
        st.info(
            "No devices yet. Provision one with `cropwatch devices provision`, start `cropwatch agent "
            "--config agent.toml` on it and run `cropwatch ingest` here (docs/edge-agent.md, docs/operations.md)."
        )
        return
    fleet["in_layout"] = fleet["device_id"].isin(placed)
    counts = fleet["status"].value_counts()
    c = st.columns(5)
    for col, s in zip(c, ["online", "asleep", "silent", "offline", "unknown"], strict=True):
        col.metric(s.capitalize(), int(counts.get(s, 0)))
    st.dataframe(
        fleet[["device_id", "status", "state_since", "last_heartbeat_at", "last_seen_at", "next_contact_at",
               "uplink_month", "uplink_today_kb", "outbox_depth", "outbox_oldest_age_s", "dropped", "cpu_percent",
               "temperature_c", "models", "agent_version", "in_layout",
               "reason"]],
        hide_index=True, width="stretch",
        column_config={
            "state_since": st.column_config.DatetimeColumn("since", format="YYYY-MM-DD HH:mm"),
            "last_heartbeat_at": st.column_config.DatetimeColumn("last heartbeat", format="YYYY-MM-DD HH:mm"),
            "last_seen_at": st.column_config.DatetimeColumn("last seen", format="YYYY-MM-DD HH:mm"),
            "next_contact_at": st.column_config.DatetimeColumn(
                "next contact", format="YYYY-MM-DD HH:mm", help="A device between uplink windows is asleep until then."
            ),
            "uplink_month": st.column_config.TextColumn("uplink this month", help="Bytes sent against its budget."),
            "uplink_today_kb": st.column_config.NumberColumn("uplink today (KB)", format="%.1f"),
            "outbox_oldest_age_s": st.column_config.NumberColumn("oldest unsent (s)", format="%.0f"),
            "in_layout": st.column_config.CheckboxColumn("in layout"),
        },
    )  # fmt: skip
    if not fleet["in_layout"].all():
        st.caption("Devices not in the layout have no place on the map; an admin can add them on Farm layout.")
    pick = st.columns([3, 1], vertical_alignment="bottom")
    device = pick[0].selectbox("Device history", list(fleet["device_id"]), key="fleet_open_pick")
    if pick[1].button("Open", key="fleet_open"):
        st.switch_page("views/device.py", query_params={"device": device})


guarded(render)
