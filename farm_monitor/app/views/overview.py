"""Overview: map of fields coloured by disease risk and devices by status, KPIs, refreshed live."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pandas as pd
import pydeck as pdk
import streamlit as st

from farm_monitor.app.risk import RISK_COLOURS, STATUS_COLOURS, risk_level
from farm_monitor.app.ui import Data, config, day_start, guarded, layout, minute_now, pick_farm, require_user

ICONS = {"critical": ":red[:material/error:]", "warning": ":orange[:material/warning:]", "info": ":material/info:"}


def render() -> None:
    user = require_user()
    st.title("Overview")
    farm = pick_farm(user)
    if farm is None:
        return
    cfg = config()

    @st.fragment(run_every=timedelta(seconds=cfg.app.refresh_s))
    def live() -> None:
        now = minute_now()
        devs = Data.device_ids(farm)
        fleet = Data.devices(farm, now, cfg.alerts.device_offline.after_s)
        k = Data.kpis(farm, devs, day_start(now))
        yields = Data.latest_yield(farm)
        online = int((fleet["status"] == "online").sum()) if not fleet.empty else 0
        c = st.columns(5)
        c[0].metric("Devices online", online)
        c[1].metric("Offline or silent", len(fleet) - online)
        c[2].metric("Open alerts", k["open_alerts"])
        c[3].metric("Detections today", k["detections_today"], help=f"{k['disease_today']} with a disease label")
        if yields.empty:
            c[4].metric("Yield outlook", "—", help="No yield forecasts yet (devices running a yield model send them).")
        else:
            unit = yields["unit"].iloc[0]
            c[4].metric(
                f"Yield outlook ({unit})",
                f"{yields['p50'].mean():.1f}",
                help=f"mean median forecast over {len(yields)} fields; 80% interval "
                f"{yields['p10'].mean():.1f}–{yields['p90'].mean():.1f}",
            )
        if fleet.empty:
            st.info(
                "No devices have reported for this farm yet. Provision one with `cropwatch devices provision`, "
                "start it with `cropwatch agent --config agent.toml` and run `cropwatch ingest` "
                "(see docs/edge-agent.md)."
            )
        if k["open_alerts"]:
            top = Data.alerts(farm, True, [], [], 5)
            st.markdown(
                "**Needs attention**  \n"
                + "  \n".join(f"{ICONS.get(r.severity, '')} {r.message}" for r in top.itertuples())
                + ("  \n…more on the Alerts page" if k["open_alerts"] > len(top) else "")
            )
        risk = Data.field_risk(farm, devs, now - timedelta(hours=cfg.app.risk_window_hours))
        draw_map(farm, fleet, risk)
        st.caption(f"Updated {now:%H:%M} UTC; refreshes every {cfg.app.refresh_s:.0f} s.")

    live()


def draw_map(farm: str, fleet: pd.DataFrame, risk: pd.DataFrame) -> None:
    cfg = config()
    lay = layout().for_farm(farm)
    rule = cfg.alerts.disease
    by_field = {r.field_id: r for r in risk.itertuples()}
    polygons: list[dict[str, Any]] = []
    points: list[dict[str, Any]] = []
    coords: list[list[float]] = []
    for f in lay.fields:
        p = f.properties
        r = by_field.get(p.field_id)
        level = risk_level(r.n if r else 0, r.share if r else 0.0, rule.min_detections, rule.percent)
        ring = [list(c) for c in f.geometry.coordinates[0]]
        coords.extend(ring)
        share = f"{r.share:.0%} of {r.n}" if r else "no detections"
        polygons.append(
            {
                "polygon": ring,
                "colour": RISK_COLOURS[level],
                "tip": f"{p.name or p.field_id} · {p.crop or ''} · risk {level} ({share})",
            }
        )
    status = dict(zip(fleet["device_id"], fleet["status"], strict=False)) if not fleet.empty else {}
    placed = set()
    for d in lay.devices:
        dp = d.properties
        placed.add(dp.device_id)
        s = status.get(dp.device_id, "never reported")
        coords.append(list(d.geometry.coordinates))
        points.append(
            {
                "position": list(d.geometry.coordinates),
                "colour": STATUS_COLOURS.get(s, [128, 128, 128]),
                "tip": f"{dp.device_id} · {s}",
            }
        )
    if not polygons and not points:
        st.info(
            "No field polygons or device locations for this farm yet: an admin can add them on the Farm layout page."
        )
    else:
        _show_deck(polygons, points, coords)
        st.caption(
            "Fields: green low risk, orange medium, red high, grey too few detections. "
            "Devices: green online, orange silent, red offline, grey never reported."
        )
    unplaced = sorted(set(status) - placed)
    if unplaced:
        st.warning(
            f"{len(unplaced)} device(s) report but are not in the farm layout: {', '.join(unplaced[:20])}"
            + (" …" if len(unplaced) > 20 else "")
        )


def _show_deck(polygons: list[dict[str, Any]], points: list[dict[str, Any]], coords: list[list[float]]) -> None:
    """Field polygons and device points on a map zoomed so the whole farm fits."""
    lons, lats = [c[0] for c in coords], [c[1] for c in coords]
    lon, lat = (min(lons) + max(lons)) / 2, (min(lats) + max(lats)) / 2
    span = max(max(lons) - min(lons), max(lats) - min(lats), 1e-4)
    zoom = max(1.0, min(18.0, math.log2(360 / span) - 1.5))  # the whole farm fits the map
    layers = [
        pdk.Layer(
            "PolygonLayer",
            polygons,
            get_polygon="polygon",
            get_fill_color="colour",
            pickable=True,
            stroked=True,
            get_line_color=[40, 40, 40],
            line_width_min_pixels=1,
            opacity=0.6,
        ),
        pdk.Layer(
            "ScatterplotLayer",
            points,
            get_position="position",
            get_fill_color="colour",
            pickable=True,
            radius_min_pixels=6,
            radius_max_pixels=12,
            stroked=True,
            get_line_color=[0, 0, 0],
        ),
    ]
    st.pydeck_chart(
        pdk.Deck(
            layers=layers,
            initial_view_state=pdk.ViewState(longitude=lon, latitude=lat, zoom=zoom),
            map_style=None,
            tooltip={"text": "{tip}"},
        ),
        height=420,
    )


guarded(render)
