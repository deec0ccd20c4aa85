"""How a farm's data and alerts get through: farm gateways and their uplink, devices' radio links,
and notifications that were not delivered. Re-exported by :mod:`.queries`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pandas as pd

from .query_sql import Sql, to_utc


def radio_link(sql: Sql, farm: str, device: str) -> dict[str, Any] | None:
    """The device's last radio link (a LoRaWAN sensor's RSSI, SNR, frame counter, gateway), None for a wired one."""
    df = sql.frame(
        "SELECT observed_at, rssi_dbm, snr_db, frame_counter, gateway_id, gateways FROM radio_links "
        "WHERE farm_id = :f AND device_id = :dev ORDER BY observed_at DESC LIMIT 1",
        {"f": farm, "dev": device},
    )
    if df.empty:
        return None
    row = df.iloc[0].to_dict()
    row["observed_at"] = to_utc(df["observed_at"]).iloc[0]
    return {k: (None if pd.isna(v) else v) for k, v in row.items()}


def farm_gateways(sql: Sql, now: datetime, offline_after_s: float) -> pd.DataFrame:
    """Every farm gateway's latest report, with its farm's detections and open alerts so far.

    ``last_contact`` is when the newest report the cloud has was made (reports queued during an
    outage arrive after it, with their own times); past ``offline_after_s`` the row is
    ``offline`` and its figures hold as of that contact (the farm keeps working on its own).
    """
    gw = sql.frame(
        "SELECT g.farm_id, g.device_id AS gateway_id, g.observed_at AS last_contact,"
        " g.uplink, g.uplink_since, g.backlog_since, g.queued_bytes, g.queued_messages, g.disk_free_bytes,"
        " g.disk_total_bytes, g.gateway_version FROM gateway_status g JOIN (SELECT farm_id, device_id,"
        " MAX(msg_id) AS last FROM gateway_status GROUP BY farm_id, device_id) m"
        " ON g.msg_id = m.last ORDER BY g.farm_id, g.device_id"
    )
    if gw.empty:
        return gw
    for col in ("last_contact", "uplink_since", "backlog_since"):
        gw[col] = to_utc(gw[col])
    det = sql.frame(
        "SELECT farm_id, COUNT(*) AS detections, MAX(observed_at) AS last_detection FROM detections GROUP BY farm_id"
    )
    alerts_open = sql.frame(
        "SELECT farm_id, COUNT(*) AS open_alerts FROM alerts WHERE resolved_at IS NULL GROUP BY farm_id"
    )
    out = gw.merge(det, on="farm_id", how="left").merge(alerts_open, on="farm_id", how="left")
    out[["detections", "open_alerts"]] = out[["detections", "open_alerts"]].fillna(0).astype(int)
    out["last_detection"] = to_utc(out["last_detection"])
    age = (pd.Timestamp(now) - out["last_contact"]).dt.total_seconds()
    out["state"] = ["offline" if a > offline_after_s else "online" for a in age]
    out["as_of"] = [
        f"as of {t:%Y-%m-%d %H:%M} UTC" if s == "offline" else "live"
        for t, s in zip(out["last_contact"], out["state"], strict=True)
    ]
    return out


def notification_problems(sql: Sql, username: str | None, limit: int = 200) -> pd.DataFrame:
    """Dead deliveries (retries used up), newest first: one user's, or everyone's for ``None`` (admins)."""
    where = "d.state = 'dead'"
    params: dict[str, Any] = {"lim": limit}
    if username is not None:
        where += " AND d.username = :u"
        params["u"] = username
    df = sql.frame(
        "SELECT d.id, d.alert_id, d.username, s.name AS subscription, d.event, d.attempts, d.last_error, "
        "d.created_at FROM notification_deliveries d JOIN subscriptions s ON s.id = d.subscription_id "
        f"WHERE {where} ORDER BY d.id DESC LIMIT :lim",
        params,
    )
    df["created_at"] = to_utc(df["created_at"])
    return df
