"""Log in with a user from the users file (``cropwatch users add``)."""

from __future__ import annotations

import streamlit as st

from farm_monitor.app.auth import AuthError
from farm_monitor.app.ui import SESSION_USER, config, guarded, users


def render() -> None:
    st.title("Cropwatch")
    st.write("Fields, devices, detections and yield outlook for your farm.")
    if not users().path.exists():
        st.info(
            f"No users yet ({config().app.users_file}). Create an admin on the server: "
            "`cropwatch users add NAME --role admin --config monitor.toml`."
        )
    with st.form("login"):
        username = st.text_input("User name", key="login_user")
        password = st.text_input("Password", type="password", key="login_password")
        submitted = st.form_submit_button("Log in")
    if not submitted:
        return
    try:
        user = users().authenticate(username, password)
    except AuthError as exc:
        st.error(str(exc))
        return
    if user is None:
        st.error("Wrong user name or password.")
        return
    st.session_state[SESSION_USER] = user.username
    st.rerun()


guarded(render)
