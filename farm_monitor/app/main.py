"""The Streamlit entry script: login gate, then one page per file under ``views/`` via st.navigation.

Run it with ``cropwatch monitor --config monitor.toml`` (which sets CROPWATCH_CONFIG).
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from farm_monitor.app.ui import SESSION_USER, current_user

VIEWS = Path(__file__).parent / "views"

st.set_page_config(page_title="Cropwatch farm monitor", page_icon=":material/eco:", layout="wide")

user = current_user()
if "ack" in st.query_params:
    # A notification's acknowledge link: the signed token is the credential, no login needed.
    ack_page = st.Page(VIEWS / "acknowledge_alert.py", title="Acknowledge", icon=":material/done:")
    nav = st.navigation([ack_page], position="hidden")
elif user is None:
    nav = st.navigation([st.Page(VIEWS / "login.py", title="Log in", icon=":material/login:")], position="hidden")
else:
    pages = {
        "Farm": [
            st.Page(VIEWS / "overview.py", title="Overview", icon=":material/map:", default=True),
            st.Page(VIEWS / "field.py", title="Field", icon=":material/grass:"),
            st.Page(VIEWS / "detections.py", title="Detections", icon=":material/photo_library:"),
            st.Page(VIEWS / "alerts.py", title="Alerts", icon=":material/notifications:"),
            st.Page(VIEWS / "reports.py", title="Reports", icon=":material/summarize:"),
            st.Page(VIEWS / "notifications.py", title="Notifications", icon=":material/campaign:"),
        ],
        "Fleet": [
            st.Page(VIEWS / "farms.py", title="Farms", icon=":material/hub:"),
            st.Page(VIEWS / "devices.py", title="Devices", icon=":material/router:"),
            st.Page(VIEWS / "device.py", title="Device", icon=":material/sensors:"),
            st.Page(VIEWS / "models.py", title="Models", icon=":material/model_training:"),
            st.Page(VIEWS / "retraining.py", title="Retraining", icon=":material/published_with_changes:"),
        ],
    }
    if user.can("layout") or user.can("users"):
        pages["Admin"] = [
            st.Page(VIEWS / "farm_layout.py", title="Farm layout", icon=":material/edit_location:"),
            st.Page(VIEWS / "users.py", title="Users", icon=":material/group:"),
        ]
    # Every page in view: collapsed, the menu hides all but ten behind "View more" (an admin has 14).
    nav = st.navigation(pages, expanded=True)
    with st.sidebar:
        st.caption(f"Signed in as **{user.username}** ({user.role})")
        if st.button("Log out", key="cw_logout"):
            st.session_state.pop(SESSION_USER, None)
            st.rerun()
nav.run()
