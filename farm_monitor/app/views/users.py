"""Users (admin): list, add and remove monitor users."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from farm_monitor.app.auth import ROLES, AuthError
from farm_monitor.app.ui import guarded, require_user, users


def render() -> None:
    user = require_user()
    st.title("Users")
    if not user.can("users"):
        st.error("Only admins manage users.")
        return
    store = users()
    st.dataframe(
        pd.DataFrame([{"user": u.username, "role": u.role, "farms": ", ".join(u.farms)} for u in store.list()]),
        hide_index=True, width="stretch",
    )  # fmt: skip
    with st.form("add_user", clear_on_submit=True):
        st.subheader("Add or change a user")
        name = st.text_input("User name")
        password = st.text_input("Password (at least 8 characters)", type="password")
        role = st.selectbox("Role", ROLES)
        farms = st.text_input("Farms (comma-separated ids, * for all)")
        replace = st.checkbox("Replace if the user exists")
        if st.form_submit_button("Save user"):
            try:
                user.require("users")
                added = store.add(
                    name.strip().lower(),
                    password,
                    role,
                    [f.strip() for f in farms.split(",") if f.strip()],
                    replace=replace,
                )
            except AuthError as exc:
                st.error(str(exc))
            else:
                st.success(f"Saved {added.username} ({added.role}).")
    others = [u.username for u in store.list() if u.username != user.username]
    if others:
        gone = st.selectbox("Remove user", others, key="usr_remove_pick")
        if st.button("Remove", key="usr_remove"):
            user.require("users")
            store.remove(gone)
            st.success(f"Removed {gone}.")
            st.rerun()


guarded(render)
