"""Models: registry versions with metrics, rollout state per device, publish and roll back (agronomists)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from farm_monitor.app import rollout_bridge
from farm_monitor.app.auth import PermissionDenied
from farm_monitor.app.ui import Data, config, guarded, pick_farm, require_user


def registry_table(root: str) -> pd.DataFrame:
    from fleet.registry import Registry

    rows = []
    for e in Registry(root).entries():
        m = e.manifest
        rows.append({
            "name": e.name, "version": e.version, "task": m.task, "created": m.created_at,
            "retired": bool(e.retired), "synthetic": m.synthetic,
            **{f"metric {k}": round(v, 4) for k, v in sorted(m.metrics.items())},
        })  # fmt: skip
    return pd.DataFrame(rows)


def render() -> None:
    user = require_user()
    st.title("Models")
    farm = pick_farm(user)
    if farm is None:
        return
    cfg = config()
    st.subheader("Registry")
    versions = pd.DataFrame()
    if not cfg.app.registry:
        st.info("No registry configured: set app.registry in monitor.toml to the folder 'cropwatch models' uses.")
    else:
        try:
            versions = registry_table(cfg.app.registry)
        except Exception as exc:  # a broken registry folder must not take the page down
            st.error(f"Cannot read the registry at {cfg.app.registry}: {exc}")
        if versions.empty:
            st.info("The registry is empty: add a version with `cropwatch models import MANIFEST`.")
        else:
            st.dataframe(versions, hide_index=True, width="stretch")

    st.subheader("Rollout on this farm")
    dm = Data.device_models(farm)
    if dm.empty:
        st.info("No device has reported a model yet, and nothing has been published to this farm.")
    else:
        dm["done"] = (dm["active_version"] == dm["desired_version"]) & (dm["state"] == "active")
        summary = dm.groupby(["model_name", "desired_version", "active_version", "state"], dropna=False).size()
        st.dataframe(summary.rename("devices").reset_index(), hide_index=True, width="stretch")
        st.dataframe(dm, hide_index=True, width="stretch")

    if not user.can("models"):
        st.caption("Read-only: publishing and rolling back are for agronomists.")
        return
    st.subheader("Publish or roll back")
    if not rollout_bridge.available():
        st.info("Rollout is not available in this installation (paho-mqtt is not installed).")
        return
    missing = rollout_bridge.missing_settings(cfg)
    if missing:
        st.info(
            f"To publish from here, set {', '.join(f'`app.{m}`' for m in missing)} in monitor.toml; "
            "or run `cropwatch models publish` / `cropwatch models rollback`."
        )
        return
    live = versions[~versions["retired"]] if not versions.empty else versions
    if live.empty:
        st.info("Nothing to publish: import a version into the registry first.")
        return
    c = st.columns(2)
    name = c[0].selectbox("Model", sorted(live["name"].unique()), key="mdl_name")
    version = c[1].selectbox("Version", list(live[live["name"] == name]["version"]), key="mdl_version")
    b = st.columns(2)
    try:
        if b[0].button(f"Publish {name} {version} to {farm}", key="mdl_publish"):
            rollout_bridge.publish(user, cfg, farm, name, version)
            Data.device_models.clear()
            st.success(f"Published {name} {version} to {farm}.")
        if b[1].button(f"Roll back {name} on {farm}", key="mdl_rollback"):
            rollout_bridge.rollback(user, cfg, farm, name)
            Data.device_models.clear()
            st.success(f"Rolled back {name} on {farm}.")
    except PermissionDenied as exc:
        st.error(str(exc))
    except Exception as exc:
        st.error(f"Rollout failed: {exc}")


guarded(render)
