"""Retraining: shadow scoring (champion vs challenger), the retraining runs, and lineage of a detection or version."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from farm_monitor.app.auth import User
from farm_monitor.app.ui import Data, class_name, dt, guarded, pick_farm, require_user


def _scores(farm: str, name: str) -> None:
    st.subheader("Shadow scoring")
    df = Data.shadow_scores(farm, name)
    if df.empty:
        st.info(
            "No detection carries a challenger's answer yet. Publish a candidate as shadow "
            "(`cropwatch retrain disease ... --publish-farm FARM` or `cropwatch models publish --mode shadow`)."
        )
        return
    shown = df.rename(columns=lambda c: c.replace("_", " "))
    st.dataframe(shown, hide_index=True, width="stretch")
    st.caption(
        "Agreement: share of detections where both models gave the same class. Accuracy: on detections whose "
        "sample an agronomist labelled (the latest label counts). Margin: challenger minus champion accuracy."
    )
    chart = pd.DataFrame(
        {
            "champion accuracy": df["champion_accuracy"].astype(float).values,
            "challenger accuracy": df["challenger_accuracy"].astype(float).values,
            "agreement": df["agreement"].astype(float).values,
        },
        index=[f"{a} vs {b}" for a, b in zip(df["champion_version"], df["challenger_version"], strict=True)],
    )
    st.bar_chart(chart, stack=False, y_label="share", x_label="champion vs challenger")


def _lineage(doc: dict[str, Any], user: User) -> None:
    run = doc.get("run")
    det = doc.get("detection")
    if det:
        st.markdown(
            f"Detection `{det['msg_id']}` on {det['device_id']} at {dt(det['observed_at'])}: "
            f"**{class_name(det['label'])}** "
            f"({det['confidence']:.0%}) by **{det['model_name']} {det['model_version']}** "
            f"(sha256 `{det['model_sha256'][:12]}…`, {det['model_variant']})"
        )
    model = doc["model"]
    if run is None:
        st.info(
            f"{model['name']} {model['version']} was not made by `cropwatch retrain`: no training run is recorded "
            "for it (its manifest's training_run names the run folder)."
        )
        return
    gate = run.get("gate") or {}
    st.markdown(
        f"Made by run **{run['run_id']}** on {dt(run['created_at'])} from base version "
        f"**{run['base_model_version'] or '?'}**; status **{run['status']}**"
        + (f" ({run['status_reason']})" if run.get("status_reason") else "")
    )
    if run["status"] == "error":
        st.warning(
            "This run stopped before the evaluation gate and made no model; the retraining tick waits for labels "
            f"entered after {dt(run['labels_until']) if run.get('labels_until') else 'it'} before it tries again."
        )
        return
    st.markdown(
        f"Dataset fingerprint `{run['dataset_fingerprint']}` (base `{run['base_dataset_fingerprint']}`); "
        f"run folder `{run['run_dir']}`"
    )
    st.markdown(f"Evaluation gate **{'passed' if run['gate_passed'] else 'failed'}**:")
    for reason in gate.get("reasons", []):
        st.markdown(f"- {reason}")
    everything = doc.get("labels") or []
    # Runs pool labels of every farm: show sample ids and labellers only of the farms this user sees.
    visible = [r for r in everything if r.get("farm_id") is not None and user.sees_farm(r["farm_id"])]
    hidden = len(everything) - len(visible)
    labels = pd.DataFrame(visible)
    if not everything:
        st.caption("The run used no field labels.")
    elif not labels.empty:
        st.caption(f"{len(labels)} field labels in this run (who labelled which sample, when, and how it was used):")
        cols = ["farm_id", "sample_msg_id", "label", "labelled_by", "labelled_at", "role", "image_sha256"]
        st.dataframe(labels[cols], hide_index=True, width="stretch")
    if hidden:
        st.caption(f"{hidden} field label(s) of farms you cannot see (or of deleted samples) are not shown.")


def render() -> None:
    user = require_user()
    st.title("Retraining")
    farm = pick_farm(user)
    if farm is None:
        return
    names = Data.model_names(farm)
    if not names:
        st.info("No model has reported detections on this farm yet.")
        return
    name = st.selectbox("Model", names, key="rt_model")
    _scores(farm, name)

    st.subheader("Training runs")
    runs = Data.training_runs(name)
    if runs.empty:
        st.info(
            f"No retraining run of {name} yet: `cropwatch retrain disease --db URL --base RUN_DIR` "
            "or the `cropwatch retrain tick` timer."
        )
    else:
        st.dataframe(runs, hide_index=True, width="stretch")

    st.subheader("Lineage")
    how = st.radio("From", ["a model version", "a detection"], horizontal=True, key="rt_from")
    if how == "a detection":
        msg_id = st.text_input("Detection msg_id", key="rt_detection").strip()
        if not msg_id:
            st.caption("Paste a detection's msg_id (the Detections page and exports show it).")
            return
        doc = Data.detection_lineage(farm, msg_id)
        if doc is None:
            st.warning(f"No detection {msg_id} on farm {farm}.")
            return
        _lineage(doc, user)
    else:
        versions = sorted(set(runs["version"]) if not runs.empty else set(), reverse=True)
        if not versions:
            st.caption("Lineage starts at a version made by retraining; none yet.")
            return
        version = st.selectbox("Version", versions, key="rt_version")
        _lineage(Data.version_lineage(name, version), user)


guarded(render)
