"""Acknowledge from a notification: ``/?ack=TOKEN`` opens this page with or without a login; the
token itself (signed, expiring, used once) says who acknowledges, checked on the server."""

from __future__ import annotations

import streamlit as st

from farm_monitor.app.actions import ActionError, acknowledge_by_link
from farm_monitor.app.ui import clear_after_write, config, engine, guarded, users


def render() -> None:
    st.title("Acknowledge alert")
    token = st.query_params.get("ack", "")
    if not token:
        st.info("Open this page from the Acknowledge link of a notification.")
        return
    # The outcome is kept per token: a rerun of this page must not count as a second use.
    done = st.session_state.setdefault("cw_ack_done", {})
    if token not in done:
        secret = config().notify.ack_secret
        try:
            plain = secret.get_secret_value() if secret is not None else None
            done[token] = (True, acknowledge_by_link(engine(), users(), plain, token))
            clear_after_write()
        except ActionError as exc:
            done[token] = (False, str(exc))
    ok, text = done[token]
    (st.success if ok else st.error)(text)
    st.markdown("[Open the monitor](/)")


guarded(render)
