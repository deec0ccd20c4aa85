"""Detections: a gallery of sample images with filters; agronomists confirm or correct the label."""

from __future__ import annotations

from datetime import timedelta

import streamlit as st

from farm_monitor.app.actions import ActionError, label_sample
from farm_monitor.app.auth import PermissionDenied
from farm_monitor.app.ui import (
    Data,
    class_name,
    clear_after_write,
    config,
    engine,
    field_ids,
    guarded,
    layout,
    minute_now,
    pick_farm,
    require_user,
)  # fmt: skip

RANGES = {"24 hours": 1, "7 days": 7, "30 days": 30, "365 days": 365}


def _confidence(confidence: float | None, reason: str) -> str:
    conf = f"{confidence:.0%}" if confidence is not None else "?"
    if reason != "uncertain":
        return conf
    # The model abstained: its class is shown as a guess, never as a diagnosis.
    st.warning("Uncertain: the model does not know this image", icon="❓")
    return f"guess, {conf}"


def render() -> None:
    user = require_user()
    st.title("Detections")
    farm = pick_farm(user)
    if farm is None:
        return
    now = minute_now()
    devs = Data.device_ids(farm)
    with st.expander("Filters", expanded=True):
        c = st.columns(3)
        field = c[0].selectbox("Field", ["(all)", *field_ids(farm, layout())], key="det_field")
        device = c[1].selectbox("Device", ["(all)", *devs], key="det_device")
        days = RANGES[c[2].selectbox("Period", list(RANGES), index=1, key="det_range")]
        since = now - timedelta(days=days)
        c = st.columns(3)
        label = c[0].selectbox(
            "Predicted class", ["(all)", *Data.sample_labels(farm, devs, since)], key="det_label",
            format_func=lambda v: v if v == "(all)" else class_name(v),
        )  # fmt: skip
        lo, hi = c[1].slider("Confidence", 0.0, 1.0, (0.0, 1.0), 0.05, key="det_conf")
        unlabelled = c[2].toggle("Unlabelled only", key="det_unlabelled")
    rows = Data.samples(
        farm, devs, since, field=None if field == "(all)" else field, device=None if device == "(all)" else device,
        label=None if label == "(all)" else label, min_conf=lo, max_conf=hi, unlabelled_only=unlabelled,
        limit=st.session_state.get("det_limit", config().app.gallery_size),
    )  # fmt: skip
    if rows.empty:
        st.info(
            "No samples match. Devices send samples when a detection has low confidence "
            "(agent config: [samples]); widen the period or clear the filters."
        )
        return
    st.caption(f"The {len(rows)} matching samples: those the model was uncertain about first, then newest.")
    more = len(rows) >= st.session_state.get("det_limit", config().app.gallery_size)
    images = Data.sample_images(farm, list(rows["msg_id"]))
    month = now - timedelta(days=30)
    classes = sorted(
        set(Data.sample_labels(farm, devs, month))
        | set(Data.detection_labels(farm, devs, month))
        | set(rows["label"].dropna())
    )
    can_label = user.can("label")
    if not can_label:
        st.caption("Read-only: labelling is for agronomists.")
    cols = st.columns(3)
    for i, r in enumerate(rows.itertuples()):
        with cols[i % 3].container(border=True):
            if r.msg_id in images:
                st.image(images[r.msg_id], width="stretch")
            conf = _confidence(r.confidence, r.reason)
            st.markdown(
                f"**{class_name(r.predicted_label)}** · {conf}  \n{r.device_id} · {r.field_id or '—'} · "
                f"{r.observed_at:%Y-%m-%d %H:%M}"
            )
            if isinstance(r.label, str):
                st.caption(f"Label: **{class_name(r.label)}** ({r.labelled})")
            if isinstance(r.model_version, str):
                # The detection id leads to the model's training run on the Retraining page (lineage).
                det = f" · detection `{r.detection_msg_id}`" if isinstance(r.detection_msg_id, str) else ""
                st.caption(f"{r.model_name} {r.model_version} · {r.reason}{det}")
            if can_label:
                current = r.label if isinstance(r.label, str) else r.predicted_label
                options = classes if current in classes else [*classes, current]
                choice = st.selectbox(
                    "Label", options, index=options.index(current) if current in options else 0,
                    key=f"lab_{r.msg_id}", accept_new_options=True, format_func=class_name,
                )  # fmt: skip
                if st.button("Save label", key=f"save_{r.msg_id}"):
                    try:
                        label_sample(engine(), user, r.msg_id, choice or "")
                    except (ActionError, PermissionDenied) as exc:
                        st.error(str(exc))
                    else:
                        clear_after_write()
                        st.toast(f"Saved label {class_name(choice)}")
                        st.rerun()
    if more and st.button("Show more", key="det_more"):
        st.session_state["det_limit"] = len(rows) + config().app.gallery_size
        st.rerun()


guarded(render)
