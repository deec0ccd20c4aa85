"""Read side of the monitor: every query aggregates in SQL and is scoped to one farm.

No Streamlit here (the app caches these in :mod:`farm_monitor.app.ui`; the benchmark and tests call
them directly). The gateway, radio-link and notification queries are in :mod:`.delivery_queries`,
re-exported here. Time filters on the device-keyed tables go through ``device_id IN (...)`` so both
SQLite and PostgreSQL walk the ``(farm_id, device_id, observed_at)`` index one range per device
instead of scanning a farm's whole history.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from shared.quantities import CANONICAL_UNITS

from .delivery_queries import (
    farm_gateways as farm_gateways,
    notification_problems as notification_problems,
    radio_link as radio_link,
)
from .query_sql import Sql as Sql, to_utc as to_utc

# Canonical unit by quantity name, for names read back from the database (plain strings).
UNITS: dict[str, str] = {q: u for q, u in CANONICAL_UNITS.items()}


def farms_with_devices(sql: Sql) -> list[str]:
    return list(sql.frame("SELECT DISTINCT farm_id FROM devices ORDER BY farm_id")["farm_id"])


def device_ids(sql: Sql, farm: str) -> list[str]:
    return list(
        sql.frame("SELECT device_id FROM devices WHERE farm_id = :f ORDER BY device_id", {"f": farm})["device_id"]
    )


def devices(sql: Sql, farm: str, now: datetime, silent_after_s: float) -> pd.DataFrame:
    """The fleet table: one row per device with its status, health and active models."""
    df = sql.frame(
        "SELECT device_id, state, state_since, last_heartbeat_at, last_seen_at, agent_version, models, health, reason, "
        "next_contact_at FROM devices WHERE farm_id = :f ORDER BY device_id",
        {"f": farm},
    )
    if df.empty:
        return df
    for col in ("state_since", "last_heartbeat_at", "last_seen_at", "next_contact_at"):
        df[col] = to_utc(df[col])
    cutoff = pd.Timestamp(now) - pd.Timedelta(seconds=silent_after_s)
    status = df["state"].fillna("unknown")
    quiet = (status == "online") & (df["last_seen_at"] < cutoff)
    # A device between uplink windows promised its next contact: asleep, not silent, until then plus grace.
    asleep = quiet & df["next_contact_at"].notna() & (df["next_contact_at"] >= cutoff)
    df["status"] = status.where(~quiet, "silent").where(~asleep, "asleep")
    health = [_json(h) or {} for h in df["health"]]
    df["uplink_month"] = [_uplink(h) for h in health]
    df["uplink_today_kb"] = [
        None if h.get("uplink_bytes_today") is None else round(h["uplink_bytes_today"] / 1000, 1) for h in health
    ]
    df["outbox_depth"] = [h.get("outbox_depth") for h in health]
    df["outbox_oldest_age_s"] = [h.get("outbox_oldest_age_s") for h in health]
    df["dropped"] = [sum((h.get("dropped") or {}).values()) for h in health]
    df["cpu_percent"] = [h.get("cpu_percent") for h in health]
    df["temperature_c"] = [h.get("temperature_c") for h in health]
    df["models"] = [
        ", ".join(f"{m.get('name')} {m.get('version')} ({m.get('state', '')})" for m in (_json(ms) or []))
        for ms in df["models"]
    ]
    return df.drop(columns=["health"])


def _uplink(health: dict[str, Any]) -> str | None:
    """Bytes sent this month against the budget, e.g. "1.20 / 5.0 MB (24%)"; None when not reported."""
    used, budget = health.get("uplink_bytes_month"), health.get("uplink_budget_month")
    if used is None:
        return None
    if not budget:
        return f"{used / 1e6:.2f} MB"
    return f"{used / 1e6:.2f} / {budget / 1e6:.1f} MB ({100 * used / budget:.0f}%)"


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


# In charts an abstained or refused detection is its status, not its guessed class.
SHOWN_LABEL = "CASE WHEN COALESCE(status, 'ok') = 'ok' THEN label ELSE status END"
# A detection the model abstained on or refused is not a sick plant (docs/disease-model.md).
SICK = "SUM(CASE WHEN lower(label) LIKE '%healthy%' OR COALESCE(status, 'ok') <> 'ok' THEN 0 ELSE 1 END) AS sick"


def kpis(sql: Sql, farm: str, devs: list[str], day_start: datetime) -> dict[str, Any]:
    out: dict[str, Any] = {"detections_today": 0, "disease_today": 0}
    out["open_alerts"] = int(
        sql.frame("SELECT COUNT(*) AS n FROM alerts WHERE farm_id = :f AND resolved_at IS NULL", {"f": farm})["n"][0]
    )
    if devs:
        row = sql.frame(
            "SELECT COUNT(*) AS n, " + SICK + " "
            "FROM detections WHERE farm_id = :f AND device_id IN :d AND observed_at >= :t",
            {"f": farm, "d": devs, "t": sql.ts(day_start)},
            ("d",),
        )
        out["detections_today"] = int(row["n"][0] or 0)
        out["disease_today"] = int(row["sick"][0] or 0)
    return out


def latest_yield(sql: Sql, farm: str) -> pd.DataFrame:
    """The latest forecast per field (one small table: yield estimates are daily per field)."""
    df = sql.frame(
        "SELECT y.field_id, y.crop, y.observed_at, y.expected, y.p10, y.p50, y.p90, y.unit, y.season_progress "
        "FROM yield_estimates y JOIN (SELECT field_id, MAX(observed_at) AS last FROM yield_estimates "
        "WHERE farm_id = :f GROUP BY field_id) l ON y.field_id = l.field_id AND y.observed_at = l.last "
        "WHERE y.farm_id = :f ORDER BY y.field_id",
        {"f": farm},
    )
    return df.drop_duplicates("field_id")


def field_risk(sql: Sql, farm: str, devs: list[str], since: datetime) -> pd.DataFrame:
    """Per field: detections and the disease share since ``since``."""
    if not devs:
        return pd.DataFrame(columns=["field_id", "n", "sick", "share"])
    df = sql.frame(
        "SELECT field_id, COUNT(*) AS n, " + SICK + " "
        "FROM detections WHERE farm_id = :f AND device_id IN :d AND observed_at >= :t GROUP BY field_id",
        {"f": farm, "d": devs, "t": sql.ts(since)},
        ("d",),
    )
    df["share"] = df["sick"].astype(float) / df["n"].clip(lower=1)
    return df


def detections_by_day(sql: Sql, farm: str, field: str, since: datetime) -> pd.DataFrame:
    day = sql.bucket("observed_at", "day")
    df = sql.frame(
        f"SELECT {day} AS day, {SHOWN_LABEL} AS label, COUNT(*) AS n FROM detections "
        f"WHERE field_id = :fld AND farm_id = :f AND observed_at >= :t GROUP BY {day}, {SHOWN_LABEL} ORDER BY 1",
        {"fld": field, "f": farm, "t": sql.ts(since)},
    )
    df["day"] = pd.to_datetime(df["day"])
    return df


def field_quantities(sql: Sql, farm: str, field: str, since: datetime) -> list[str]:
    df = sql.frame(
        "SELECT DISTINCT quantity FROM telemetry WHERE field_id = :fld AND farm_id = :f AND observed_at >= :t "
        "ORDER BY quantity",
        {"fld": field, "f": farm, "t": sql.ts(since)},
    )
    return list(df["quantity"])


def telemetry_series(sql: Sql, farm: str, field: str, quantity: str, since: datetime, unit: str) -> pd.DataFrame:
    bucket = sql.bucket("observed_at", unit)
    df = sql.frame(
        f"SELECT {bucket} AS t, AVG(value) AS mean, MIN(value) AS min, MAX(value) AS max FROM telemetry "
        f"WHERE field_id = :fld AND quantity = :q AND observed_at >= :t AND farm_id = :f GROUP BY {bucket} ORDER BY 1",
        {"fld": field, "q": quantity, "t": sql.ts(since), "f": farm},
    )
    df["t"] = pd.to_datetime(df["t"])
    return df


def yield_history(sql: Sql, farm: str, field: str) -> pd.DataFrame:
    """The forecast of one field through its latest season, one point per day."""
    day = sql.bucket("observed_at", "day")
    df = sql.frame(
        f"SELECT {day} AS day, AVG(expected) AS expected, AVG(p10) AS p10, AVG(p50) AS p50, AVG(p90) AS p90, "
        "MAX(unit) AS unit, MAX(days_into_season) AS days_into_season FROM yield_estimates "
        "WHERE field_id = :fld AND farm_id = :f AND season_start = "
        "(SELECT MAX(season_start) FROM yield_estimates WHERE field_id = :fld AND farm_id = :f) "
        f"GROUP BY {day} ORDER BY 1",
        {"fld": field, "f": farm},
    )
    df["day"] = pd.to_datetime(df["day"])
    return df


SAMPLE_COLUMNS = (
    "s.msg_id, s.device_id, s.field_id, s.observed_at, s.reason, s.predicted_label, s.confidence, s.model_name, "
    "s.model_version, s.detection_msg_id, s.width, s.height"
)
CURRENT_LABEL = (
    "(SELECT l.label FROM labels l WHERE l.sample_msg_id = s.msg_id ORDER BY l.labelled_at DESC, l.id DESC LIMIT 1)"
)
CURRENT_LABEL_BY = (
    "(SELECT l.labelled_by || ' ' || l.labelled_at FROM labels l WHERE l.sample_msg_id = s.msg_id "
    "ORDER BY l.labelled_at DESC, l.id DESC LIMIT 1)"
)


def samples(
    sql: Sql,
    farm: str,
    devs: list[str],
    since: datetime,
    field: str | None = None,
    device: str | None = None,
    label: str | None = None,
    min_conf: float = 0.0,
    max_conf: float = 1.0,
    unlabelled_only: bool = False,
    limit: int = 24,
) -> pd.DataFrame:
    """The samples matching the filters, `uncertain` ones first, then newest first, with their current label."""
    where = ["s.farm_id = :f", "s.observed_at >= :t"]
    params: dict[str, Any] = {"f": farm, "t": sql.ts(since), "lo": min_conf, "hi": max_conf, "lim": limit}
    expanding: tuple[str, ...] = ()
    if device:
        where.append("s.device_id = :dev")
        params["dev"] = device
    elif devs:
        where.append("s.device_id IN :d")
        params["d"] = devs
        expanding = ("d",)
    if field:
        where.append("s.field_id = :fld")
        params["fld"] = field
    if label:
        where.append("s.predicted_label = :lab")
        params["lab"] = label
    where.append("COALESCE(s.confidence, 0) BETWEEN :lo AND :hi")
    if unlabelled_only:
        where.append("NOT EXISTS (SELECT 1 FROM labels l WHERE l.sample_msg_id = s.msg_id)")
    df = sql.frame(
        f"SELECT {SAMPLE_COLUMNS}, {CURRENT_LABEL} AS label, {CURRENT_LABEL_BY} AS labelled "
        f"FROM samples s WHERE {' AND '.join(where)} "
        # Images the model abstained on lead the labelling queue: their labels teach it the most.
        "ORDER BY CASE WHEN s.reason = 'uncertain' THEN 0 ELSE 1 END, s.observed_at DESC LIMIT :lim",
        params,
        expanding,
    )
    df["observed_at"] = to_utc(df["observed_at"])
    return df


def sample_images(sql: Sql, farm: str, msg_ids: list[str]) -> dict[str, bytes]:
    if not msg_ids:
        return {}
    df = sql.frame(
        "SELECT msg_id, image_jpeg FROM samples WHERE farm_id = :f AND msg_id IN :m", {"f": farm, "m": msg_ids}, ("m",)
    )
    return {r.msg_id: bytes(r.image_jpeg) for r in df.itertuples()}


def sample_labels(sql: Sql, farm: str, devs: list[str], since: datetime) -> list[str]:
    """Predicted labels seen on this farm's samples (for the class filter)."""
    if not devs:
        return []
    df = sql.frame(
        "SELECT DISTINCT predicted_label FROM samples WHERE farm_id = :f AND device_id IN :d AND observed_at >= :t "
        "AND predicted_label IS NOT NULL ORDER BY 1",
        {"f": farm, "d": devs, "t": sql.ts(since)},
        ("d",),
    )
    return list(df["predicted_label"])


def detection_labels(sql: Sql, farm: str, devs: list[str], since: datetime) -> list[str]:
    """Classes the farm's models reported (the choices when correcting a label)."""
    if not devs:
        return []
    df = sql.frame(
        "SELECT DISTINCT label FROM detections WHERE farm_id = :f AND device_id IN :d AND observed_at >= :t ORDER BY 1",
        {"f": farm, "d": devs, "t": sql.ts(since)},
        ("d",),
    )
    return list(df["label"])


def alerts(
    sql: Sql, farm: str, open_only: bool, rules: list[str], severities: list[str], limit: int = 500
) -> pd.DataFrame:
    where = ["farm_id = :f"]
    params: dict[str, Any] = {"f": farm, "lim": limit}
    expanding = []
    if open_only:
        where.append("resolved_at IS NULL")
    if rules:
        where.append("rule IN :r")
        params["r"] = rules
        expanding.append("r")
    if severities:
        where.append("severity IN :s")
        params["s"] = severities
        expanding.append("s")
    df = sql.frame(
        "SELECT id, rule, severity, device_id, field_id, message, raised_at, resolved_at, acknowledged_at, "
        f"acknowledged_by FROM alerts WHERE {' AND '.join(where)} ORDER BY raised_at DESC LIMIT :lim",
        params,
        tuple(expanding),
    )
    for col in ("raised_at", "resolved_at", "acknowledged_at"):
        df[col] = to_utc(df[col])
    return df


def device_history(sql: Sql, farm: str, device: str, since: datetime) -> dict[str, pd.DataFrame]:
    p = {"f": farm, "dev": device, "t": sql.ts(since)}
    day = sql.bucket("observed_at", "day")
    hour = sql.bucket("observed_at", "hour")
    det = sql.frame(
        f"SELECT {day} AS day, {SHOWN_LABEL} AS label, COUNT(*) AS n FROM detections "
        f"WHERE farm_id = :f AND device_id = :dev AND observed_at >= :t GROUP BY {day}, {SHOWN_LABEL} ORDER BY 1",
        p,
    )
    det["day"] = pd.to_datetime(det["day"])
    beats = sql.frame(
        f"SELECT {hour} AS hour, COUNT(*) AS heartbeats, MAX(state) AS state FROM status_reports "
        f"WHERE farm_id = :f AND device_id = :dev AND observed_at >= :t GROUP BY {hour} ORDER BY 1",
        p,
    )
    beats["hour"] = pd.to_datetime(beats["hour"])
    events = sql.frame(
        "SELECT observed_at, level, code, message FROM events WHERE farm_id = :f AND device_id = :dev "
        "AND observed_at >= :t ORDER BY observed_at DESC LIMIT 200",
        p,
    )
    events["observed_at"] = to_utc(events["observed_at"])
    return {"detections": det, "heartbeats": beats, "events": events}


def sensor_health(sql: Sql, farm: str, device: str) -> pd.DataFrame:
    """The device's open sensor_health alerts: which channel is flagged, how, since when."""
    df = sql.frame(
        "SELECT details, raised_at FROM alerts WHERE farm_id = :f AND device_id = :dev AND rule = 'sensor_health' "
        "AND resolved_at IS NULL ORDER BY raised_at",
        {"f": farm, "dev": device},
    )
    rows = []
    for details, raised in zip(df["details"], df["raised_at"], strict=True):
        d = _json(details) or {}
        quantity = str(d.get("quantity", ""))
        rows.append({
            "sensor": d.get("sensor"), "quantity": quantity, "unit": UNITS.get(quantity, ""),
            "state": str(d.get("state", "")).replace("_", " "), "since": d.get("since"), "alert raised": raised,
        })  # fmt: skip
    out = pd.DataFrame(rows, columns=["sensor", "quantity", "unit", "state", "since", "alert raised"])
    for col in ("since", "alert raised"):
        out[col] = to_utc(out[col])
    return out


def device_models(sql: Sql, farm: str) -> pd.DataFrame:
    df = sql.frame(
        "SELECT device_id, model_name, role, desired_version, active_version, active_variant, state, state_since, "
        "desired_at, desired_by, reported_at FROM device_models WHERE farm_id = :f ORDER BY model_name, device_id",
        {"f": farm},
    )
    for col in ("state_since", "desired_at", "reported_at"):
        df[col] = to_utc(df[col])
    return df


def utcnow() -> datetime:
    return datetime.now(UTC)


# --- retraining: shadow scoring and lineage (fleet.shadow, fleet.lineage) -------------------------


def model_names(sql: Sql, farm: str) -> list[str]:
    df = sql.frame(
        "SELECT DISTINCT model_name FROM detections WHERE farm_id = :f "
        "UNION SELECT DISTINCT model_name FROM device_models WHERE farm_id = :f ORDER BY model_name",
        {"f": farm},
    )
    return list(df["model_name"]) if not df.empty else []


def shadow_scores(sql: Sql, farm: str, model_name: str) -> pd.DataFrame:
    from fleet.shadow import shadow_report

    rows = [s.as_dict() for s in shadow_report(sql.engine, farm, model_name)]
    columns = ["champion_version", "challenger_version", "compared", "agreed", "agreement", "labelled",
               "champion_correct", "challenger_correct", "champion_accuracy", "challenger_accuracy",
               "margin"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def training_runs(sql: Sql, model_name: str) -> pd.DataFrame:
    from fleet import lineage

    rows = []
    for r in lineage.runs(sql.engine, model_name):
        counts = r.get("counts") or {}
        rows.append({
            "run": r["run_id"], "version": r["model_version"], "base version": r["base_model_version"],
            "status": r["status"],
            "gate": "not reached" if r["status"] == "error" else "passed" if r["gate_passed"] else "failed",
            "created": r["created_at"], "field labels": counts.get("field_labels"),
            "field test": counts.get("field_test"), "fingerprint": r["dataset_fingerprint"],
            "reason": r.get("status_reason"),
        })  # fmt: skip
    return pd.DataFrame(rows)


def version_lineage(sql: Sql, model_name: str, version: str) -> dict[str, Any]:
    from fleet import lineage

    return lineage.version_lineage(sql.engine, model_name, version)


def detection_lineage(sql: Sql, farm: str, msg_id: str) -> dict[str, Any] | None:
    from fleet import lineage

    return lineage.detection_lineage(sql.engine, farm, msg_id)


def display_names(sql: Sql) -> dict[str, str]:
    """Label -> display name from the manifests in the ``models`` table (``models publish --db`` writes
    them); where two models name a label differently, the latest registered wins."""
    df = sql.frame("SELECT manifest FROM models WHERE manifest IS NOT NULL ORDER BY registered_at")
    names: dict[str, str] = {}
    for doc in df["manifest"]:
        manifest = json.loads(doc) if isinstance(doc, str) else doc
        names.update((manifest or {}).get("display_names") or {})
    return names
