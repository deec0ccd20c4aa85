"""Reports: the daily or weekly farm report on screen (its charts) and as a PDF download."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import streamlit as st

from farm_monitor.app.ui import config, engine, guarded, layout, pick_farm, require_user
from farm_monitor.report import FarmReport, build_farm_report

DAYS = {"Day": 1, "Week": 7}


def render() -> None:
    user = require_user()
    st.title("Reports")
    farm = pick_farm(user, key="reports")
    if farm is None:
        return
    cfg = config()
    cols = st.columns(2)
    period = cols[0].selectbox("Period", list(DAYS), index=1, key="rep_period")
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    last = cols[1].date_input("Last day (UTC)", value=yesterday, max_value=yesterday + timedelta(days=1),
                              key="rep_end")  # fmt: skip
    start = datetime.combine(last - timedelta(days=DAYS[period] - 1), time(0), tzinfo=UTC)
    end = datetime.combine(last + timedelta(days=1), time(0), tzinfo=UTC)
    st.caption(
        "The same report subscribers get by email (daily or weekly, chosen in their notification settings): "
        "field map by risk, detections, open alerts, device health, sensor trends and the yield outlook."
    )
    key = f"rep_{farm}_{start:%Y%m%d}_{end:%Y%m%d}"
    if st.button("Build report", key="rep_build", type="primary"):
        with st.spinner("Drawing the charts…"):
            built = build_farm_report(
                engine(), farm, start, end, cfg.report.monitor_url, layout=layout(), rule=cfg.alerts.disease,
                risk_window_h=cfg.app.risk_window_hours, silent_after_s=cfg.alerts.device_offline.after_s,
            )  # fmt: skip
        # Reruns (the download click is one) must not redraw every chart.
        st.session_state[key] = built
    report: FarmReport | None = st.session_state.get(key)
    if report is None:
        return
    st.download_button("Download PDF", report.pdf, file_name=report.pdf_name, mime="application/pdf",
                       key="rep_download", icon=":material/download:")  # fmt: skip
    st.markdown(f"**{report.summary.get(farm, '')}**")
    for cid, png in report.images.items():
        st.image(png, caption=cid.partition(".")[0].replace("_", " "))


guarded(render)
