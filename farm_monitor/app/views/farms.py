"""Farms: every farm gateway, its uplink, backlog and last contact, its detections and open alerts.

A farm whose gateway has not reported within the offline threshold is shown "as of" its last
contact: it keeps working on its own, and its backlog arrives when the uplink returns.
"""

from __future__ import annotations

import streamlit as st

from farm_monitor.app.ui import Data, config, guarded, minute_now, require_user


def render() -> None:
    user = require_user()
    st.title("Farms")
    gateways = Data.farm_gateways(minute_now(), config().alerts.device_offline.after_s)
    if not gateways.empty:
        gateways = gateways[gateways["farm_id"].isin(user.visible_farms(sorted(set(gateways["farm_id"]))))]
    if gateways.empty:
        st.info(
            "No farm gateway has reported yet. Set one up with `cropwatch gateway init` and run "
            "`cropwatch gateway health` on it (docs/gateway.md)."
        )
        return
    c = st.columns(3)
    c[0].metric("Gateways", len(gateways))
    c[1].metric("Uplink down", int((gateways["uplink"] != "up").sum() + (gateways["state"] == "offline").sum()))
    c[2].metric("Backlog (MB)", f"{gateways['queued_bytes'].fillna(0).sum() / 1e6:.1f}")
    for row in gateways.itertuples():
        if row.state == "offline":
            st.warning(
                f"{row.farm_id}: no contact since {row.last_contact:%Y-%m-%d %H:%M} UTC; figures are {row.as_of}"
            )
    st.dataframe(
        gateways[["farm_id", "gateway_id", "state", "as_of", "uplink", "uplink_since", "backlog_since", "queued_bytes",
                  "queued_messages", "last_contact", "detections", "last_detection", "open_alerts", "disk_free_bytes",
                  "gateway_version"]],
        hide_index=True, width="stretch",
        column_config={
            "uplink_since": st.column_config.DatetimeColumn("uplink since", format="YYYY-MM-DD HH:mm"),
            "backlog_since": st.column_config.DatetimeColumn("backlog since", format="YYYY-MM-DD HH:mm"),
            "last_contact": st.column_config.DatetimeColumn("last contact", format="YYYY-MM-DD HH:mm"),
            "last_detection": st.column_config.DatetimeColumn("last detection", format="YYYY-MM-DD HH:mm"),
        },
    )  # fmt: skip


guarded(render)
