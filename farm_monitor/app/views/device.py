"""Device: one device's status, flagged sensors, heartbeats, detections and events over time."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import streamlit as st

from farm_monitor.app.ui import Data, class_name, config, dt, guarded, minute_now, pick_farm, require_user


def render() -> None:
    user = require_user()
    st.title("Device")
    farm = pick_farm(user)
    if farm is None:
        return
    now = minute_now()
    fleet = Data.devices(farm, now, config().alerts.device_offline.after_s)
    if fleet.empty:
        st.info("No devices have reported for this farm yet; see the Devices page for how to start one.")
        return
    ids = list(fleet["device_id"])
    wanted = st.query_params.get("device")
    device = st.selectbox("Device", ids, index=ids.index(wanted) if wanted in ids else 0, key="dev_pick")
    st.query_params["device"] = device
    row = fleet[fleet["device_id"] == device].iloc[0]
    c = st.columns(3)
    c[0].metric("Status", row["status"], help=f"since {dt(row['state_since'])}")
    c[1].metric("Outbox depth", "—" if row["outbox_depth"] is None else int(row["outbox_depth"]))
    c[2].metric("Dropped", int(row["dropped"] or 0))
    if row["uplink_month"] is not None or row["next_contact_at"] is not None:
        st.caption(
            f"Uplink this month {row['uplink_month'] or '—'} · today {row['uplink_today_kb'] or 0:g} KB · "
            f"next expected contact {dt(row['next_contact_at'])}"
        )
    st.caption(
        f"Last heartbeat {dt(row['last_heartbeat_at'])} · last seen {dt(row['last_seen_at'])} · "
        f"agent {row['agent_version'] or '?'} · models {row['models'] or '—'}"
    )
    link = Data.radio_link(farm, device)
    if link is not None:
        _radio(link)
    health = Data.sensor_health(farm, device)
    if not health.empty:
        st.subheader("Sensor health")
        st.warning(
            f"{len(health)} sensor channel(s) flagged: out of range or stuck readings are still stored but not to be "
            "trusted; missing ones send nothing. The alert resolves when the channel reads normally again."
        )
        st.dataframe(health, hide_index=True, width="stretch")
    days = st.selectbox("Period", [1, 7, 30], index=1, format_func=lambda d: f"{d} days", key="dev_days")
    hist = Data.device_history(farm, device, now - timedelta(days=days))
    st.subheader("Heartbeats per hour")
    if hist["heartbeats"].empty:
        st.info("No status reports in this period (status history is kept 30 days).")
    else:
        st.bar_chart(hist["heartbeats"].set_index("hour")[["heartbeats"]], height=180)
    st.subheader("Detections per day")
    if hist["detections"].empty:
        st.info("No detections in this period.")
    else:
        det = (
            hist["detections"]
            .pivot_table(index="day", columns="label", values="n", aggfunc="sum")
            .fillna(0)
            .rename(columns=class_name)
        )
        st.bar_chart(det, height=220)
    st.subheader("Events")
    if hist["events"].empty:
        st.info("No events in this period.")
    else:
        st.dataframe(hist["events"], hide_index=True, width="stretch")


def _radio(link: dict[str, Any]) -> None:
    """The last uplink's radio link: a weak or failing link explains gaps before the sensor is blamed."""
    st.subheader("Radio link")
    c = st.columns(4)
    c[0].metric("RSSI", "—" if link["rssi_dbm"] is None else f"{link['rssi_dbm']:g} dBm")
    c[1].metric("SNR", "—" if link["snr_db"] is None else f"{link['snr_db']:g} dB")
    c[2].metric("Frame counter", "—" if link["frame_counter"] is None else int(link["frame_counter"]))
    c[3].metric("Gateway", link["gateway_id"] or "—")
    heard = "" if link["gateways"] is None else f" · heard by {int(link['gateways'])} gateway(s)"
    st.caption(f"Last uplink {dt(link['observed_at'])}{heard}")


guarded(render)
