"""Farm layout (admin): edit one farm's fields and device locations as GeoJSON."""

from __future__ import annotations

import json

import streamlit as st

from farm_monitor.app.actions import save_farm_layout
from farm_monitor.app.auth import PermissionDenied
from farm_monitor.app.layout import LayoutError
from farm_monitor.app.ui import config, guarded, layout, require_user

EXAMPLE = {
    "type": "FeatureCollection",
    "features": [
        {"type": "Feature", "properties": {"kind": "field", "farm_id": "FARM", "field_id": "north", "name": "North",
         "crop": "tomato", "planting_date": "2026-04-15"},
         "geometry": {"type": "Polygon", "coordinates": [[[-93.60, 42.00], [-93.59, 42.00], [-93.59, 42.01],
                                                          [-93.60, 42.01], [-93.60, 42.00]]]}},
        {"type": "Feature", "properties": {"kind": "device", "farm_id": "FARM", "device_id": "gw-01",
                                           "field_id": "north"},
         "geometry": {"type": "Point", "coordinates": [-93.595, 42.005]}},
    ],
}  # fmt: skip


def render() -> None:
    user = require_user()
    st.title("Farm layout")
    if not user.can("layout"):
        st.error("Only admins edit the farm layout.")
        return
    full = layout()
    farm = st.text_input(
        "Farm id", value=st.session_state.get("cw_farm") or (full.farms() or ["farm-1"])[0], key="lay_farm"
    ).strip()
    if not farm:
        return
    current = full.for_farm(farm)
    text = json.dumps(
        current.to_geojson()
        if current.fields or current.devices
        else json.loads(json.dumps(EXAMPLE).replace("FARM", farm)),
        indent=1,
    )
    st.caption(f"Fields are GeoJSON Polygons ([lon, lat]), devices Points; saved to {config().app.farm_file}.")
    edited = st.text_area("GeoJSON of this farm", value=text, height=360, key=f"lay_text_{farm}")
    if st.button("Validate and save", key="lay_save"):
        try:
            doc = json.loads(edited)
            saved = save_farm_layout(config().app.farm_file, user, farm, doc)
        except json.JSONDecodeError as exc:
            st.error(f"Not valid JSON: {exc}")
        except (LayoutError, PermissionDenied) as exc:
            st.error(str(exc))
        else:
            part = saved.for_farm(farm)
            st.success(f"Saved {len(part.fields)} field(s) and {len(part.devices)} device location(s) for {farm}.")


guarded(render)
