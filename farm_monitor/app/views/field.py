"""Field: detections over time by class, current risk, sensor charts, yield forecast through the season."""

from __future__ import annotations

from datetime import timedelta

import altair as alt
import streamlit as st

from farm_monitor.app.queries import UNITS
from farm_monitor.app.risk import risk_level
from farm_monitor.app.ui import (
    Data,
    class_name,
    config,
    field_ids,
    guarded,
    layout,
    minute_now,
    pick_farm,
    require_user,
)

RANGES = {"7 days": 7, "30 days": 30, "90 days": 90, "365 days": 365}


def render() -> None:
    user = require_user()
    st.title("Field")
    farm = pick_farm(user)
    if farm is None:
        return
    lay = layout().for_farm(farm)
    fields = field_ids(farm, lay)
    if not fields:
        st.info("No fields yet: an admin adds them on the Farm layout page; devices tag their results with a field_id.")
        return
    cols = st.columns(2)
    field = cols[0].selectbox("Field", fields, key="field_pick")
    days = RANGES[cols[1].selectbox("Period", list(RANGES), index=1, key="field_range")]
    props = next((f.properties for f in lay.fields if f.properties.field_id == field), None)
    if props is not None:
        st.caption(f"{props.name or field} · crop {props.crop or 'unknown'} · planted {props.planting_date or '?'}")
    else:
        st.caption("This field reports data but is not in the farm layout.")
    cfg = config()
    now = minute_now()
    rule = cfg.alerts.disease
    risk = Data.field_risk(farm, Data.device_ids(farm), now - timedelta(hours=cfg.app.risk_window_hours))
    row = risk[risk["field_id"] == field]
    n, share = (int(row["n"].iloc[0]), float(row["share"].iloc[0])) if not row.empty else (0, 0.0)
    level = risk_level(n, share, rule.min_detections, rule.percent)
    st.metric(f"Disease risk (last {cfg.app.risk_window_hours:.0f} h)", level, help=f"{share:.0%} of {n} detections")

    st.subheader("Detections by class")
    det = Data.detections_by_day(farm, field, now - timedelta(days=days))
    if det.empty:
        st.info("No detections from this field in this period.")
    else:
        st.bar_chart(
            det.pivot_table(index="day", columns="label", values="n", aggfunc="sum")
            .fillna(0)
            .rename(columns=class_name)
        )

    st.subheader("Sensors")
    quantities = Data.field_quantities(farm, field, now - timedelta(days=days))
    if not quantities:
        st.info("No sensor readings from this field in this period.")
    unit = "hour" if days <= 30 else "day"
    # Every quantity the field reported (a Modbus probe or a LoRaWAN node adds its own), two per row.
    for i, quantity in enumerate(quantities):
        if i % 2 == 0:
            cols = st.columns(2)
        series = Data.telemetry_series(farm, field, quantity, now - timedelta(days=days), unit)
        with cols[i % 2]:
            st.caption(f"{quantity.replace('_', ' ')} ({UNITS.get(quantity, '?')}, {unit}ly mean)")
            st.line_chart(series.set_index("t")[["mean"]], height=180)

    st.subheader("Yield forecast")
    yh = Data.yield_history(farm, field)
    if yh.empty:
        st.info("No yield forecasts for this field yet (a device running a yield model sends them).")
        return
    last = yh.iloc[-1]
    week = yh[yh["day"] <= last["day"] - timedelta(days=7)]
    delta = f"{last['p50'] - week['p50'].iloc[-1]:+.2f} in 7 days" if not week.empty else None
    st.metric(
        f"Forecast ({last['unit']})",
        f"{last['p50']:.2f}",
        delta=delta,
        help=f"80% interval {last['p10']:.2f}–{last['p90']:.2f}, day {int(last['days_into_season'])} of the season",
    )
    band = (
        alt.Chart(yh)
        .mark_area(opacity=0.3)
        .encode(x=alt.X("day:T", title="day"), y=alt.Y("p10:Q", title=last["unit"]), y2="p90:Q")
    )
    line = alt.Chart(yh).mark_line().encode(x="day:T", y="p50:Q")
    st.altair_chart(band + line, width="stretch")
    st.caption("Line: median forecast; band: 10th–90th percentile, as the forecast moved through the season.")


guarded(render)
