"""Log in with a user from the users file (``cropwatch users add``)."""

from __future__ import annotations

import logging
import time

import streamlit as st

from farm_monitor.app.auth import AuthError, LoginThrottle
from farm_monitor.app.ui import SESSION_USER, config, guarded, users

logger = logging.getLogger("farm_monitor.app.login")


@st.cache_resource(show_spinner=False)
def login_throttle() -> LoginThrottle:
    return LoginThrottle()


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
    name = username.strip().lower()
    throttle = login_throttle()
    wait = throttle.wait_s(name, time.monotonic())
    if wait > 0:
        st.error(f"Too many wrong passwords for {name}; try again in {wait:.0f} s.")
        return
    try:
        user = users().authenticate(name, password)
    except AuthError as exc:
        st.error(str(exc))
        return
    if user is None:
        throttle.failed(name, time.monotonic())
        logger.warning("failed login for %r", name)
        st.error("Wrong user name or password.")
        return
    throttle.succeeded(name)
    logger.info("%s logged in", user.username)
    st.session_state[SESSION_USER] = user.username
    st.rerun()


guarded(render)
