"""What a farm report says, read from the monitor database for one farm and one period.

Plain SQL aggregated in the database (as the monitor's pages do), scoped to one farm, with the
period ``[start, end)``. Device state is the devices table's, i.e. as of when the report is built;
everything else is as of ``end``. No pandas: these are small result sets and the report module is
imported by the monitor and by the delivery tick alike.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, bindparam, text

from shared.display_names import display_name
from shared.quantities import CANONICAL_UNITS

from ..config import DiseaseRule
from ..db.dialect import bind_timestamp, time_bucket
from ..layout import FarmLayout
from ..risk import risk_level

SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}


@dataclass
class FieldRisk:
    field_id: str
    name: str
    crop: str | None
    level: str  # low | medium | high | unknown (farm_monitor.risk)
    n: int
    sick: int
    ring: list[tuple[float, float]] | None  # the polygon's outer ring (lon, lat); None: not in the layout

    @property
    def share(self) -> float:
        return self.sick / self.n if self.n else 0.0


@dataclass
class DeviceHealth:
    device_id: str
    status: str  # online | silent | offline | unknown
    last_seen_at: datetime | None
    agent_version: str | None
    outbox_depth: int | None
    dropped: int
    position: tuple[float, float] | None  # from the layout; None: reports but is not placed


@dataclass
class OpenAlert:
    id: int
    severity: str
    rule: str
    message: str
    raised_at: datetime
    acknowledged_by: str | None


@dataclass
class YieldOutlook:
    field_id: str
    crop: str | None
    unit: str
    p10: float
    p50: float
    p90: float
    days_into_season: int
    at: datetime
    p50_at_start: float | None  # the forecast as it stood when the period began (None: none yet)


@dataclass
class SensorTrend:
    quantity: str
    unit: str
    field_id: str
    times: list[datetime]
    means: list[float]
    low: float
    mean: float
    high: float
    last: float


@dataclass
class FarmData:
    farm: str
    start: datetime
    end: datetime
    bucket: str  # hour | day: the detection and sensor charts' step
    risk_window_h: float
    fields: list[FieldRisk] = field(default_factory=list)
    devices: list[DeviceHealth] = field(default_factory=list)
    detections: dict[str, dict[datetime, int]] = field(default_factory=dict)  # class name -> bucket -> count
    alerts: list[OpenAlert] = field(default_factory=list)
    alerts_raised: int = 0
    alerts_resolved: int = 0
    yields: list[YieldOutlook] = field(default_factory=list)
    sensors: list[SensorTrend] = field(default_factory=list)

    def class_totals(self) -> dict[str, int]:
        """Detections per class over the period, most first."""
        totals = {name: sum(by.values()) for name, by in self.detections.items()}
        return dict(sorted(totals.items(), key=lambda kv: (-kv[1], kv[0])))


class _Db:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sqlite = engine.dialect.name == "sqlite"

    def ts(self, value: datetime) -> Any:
        return bind_timestamp(self.engine, value)

    def bucket(self, column: str, unit: str) -> str:
        return time_bucket(self.engine, column, unit)

    def rows(self, sql: str, params: dict[str, Any], expanding: tuple[str, ...] = ()) -> list[Any]:
        stmt = text(sql)
        if expanding:
            stmt = stmt.bindparams(*(bindparam(name, expanding=True) for name in expanding))
        with self.engine.connect() as conn:
            return list(conn.execute(stmt, params).fetchall())


def as_utc(value: Any) -> datetime | None:
    """SQLite gives naive UTC text, PostgreSQL aware datetimes; both become aware UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _bucket_time(text_value: str) -> datetime:
    # "2026-12-02" or "2026-12-02T13" / "2026-12-02 13" from substr of SQLite's "2026-12-02 13:..."
    value = text_value.replace("T", " ")
    return datetime.strptime(value, "%Y-%m-%d %H" if len(value) > 10 else "%Y-%m-%d").replace(tzinfo=UTC)


def load_farm_data(
    engine: Engine,
    farm: str,
    start: datetime,
    end: datetime,
    layout: FarmLayout,
    rule: DiseaseRule,
    risk_window_h: float = 72.0,
    silent_after_s: float = 1800.0,
) -> FarmData:
    """Everything one farm's report shows for ``[start, end)``."""
    db = _Db(engine)
    # A daily report's charts step by the hour, anything longer by the day.
    bucket = "hour" if end - start <= timedelta(days=2) else "day"
    data = FarmData(farm, start, end, bucket, risk_window_h)
    lay = layout.for_farm(farm)
    devs = [r.device_id for r in db.rows("SELECT device_id FROM devices WHERE farm_id = :f", {"f": farm})]
    data.fields = _field_risk(db, farm, devs, end - timedelta(hours=risk_window_h), end, lay, rule)
    # Device state is as of now (the database keeps no history); a period may end in the future.
    data.devices = _devices(db, farm, lay, min(end, datetime.now(UTC)), silent_after_s)
    data.detections = _detections(db, farm, devs, start, end, bucket)
    data.alerts, data.alerts_raised, data.alerts_resolved = _alerts(db, farm, start, end)
    data.yields = _yields(db, farm, start, end)
    data.sensors = _sensors(db, farm, start, end, bucket)
    return data


# The disease alert rule's test: a label containing healthy_pattern (case-insensitive) is not a disease.
SICK = "SUM(CASE WHEN lower(label) LIKE :healthy THEN 0 ELSE 1 END)"


def _field_risk(
    db: _Db, farm: str, devs: list[str], since: datetime, end: datetime, lay: FarmLayout, rule: DiseaseRule
) -> list[FieldRisk]:
    counts: dict[str, tuple[int, int]] = {}
    if devs:
        rows = db.rows(
            f"SELECT field_id, COUNT(*) AS n, {SICK} AS sick FROM detections "
            "WHERE farm_id = :f AND device_id IN :d AND observed_at >= :t0 AND observed_at < :t1 GROUP BY field_id",
            {
                "f": farm,
                "d": devs,
                "t0": db.ts(since),
                "t1": db.ts(end),
                "healthy": f"%{rule.healthy_pattern.lower()}%",
            },
            ("d",),
        )
        counts = {r.field_id: (int(r.n), int(r.sick or 0)) for r in rows if r.field_id}
    out = []
    for f in lay.fields:
        p = f.properties
        n, sick = counts.pop(p.field_id, (0, 0))
        level = risk_level(n, sick / n if n else 0.0, rule.min_detections, rule.percent)
        ring = [(float(c[0]), float(c[1])) for c in f.geometry.coordinates[0]]
        out.append(FieldRisk(p.field_id, p.name or p.field_id, p.crop, level, n, sick, ring))
    for fid, (n, sick) in sorted(counts.items()):  # reports detections, not drawn in the layout
        level = risk_level(n, sick / n if n else 0.0, rule.min_detections, rule.percent)
        out.append(FieldRisk(fid, fid, None, level, n, sick, None))
    return out


def _devices(db: _Db, farm: str, lay: FarmLayout, now: datetime, silent_after_s: float) -> list[DeviceHealth]:
    placed = {d.properties.device_id: d.geometry.coordinates for d in lay.devices}
    rows = db.rows(
        "SELECT device_id, state, last_seen_at, agent_version, health FROM devices WHERE farm_id = :f "
        "ORDER BY device_id",
        {"f": farm},
    )
    out = []
    for r in rows:
        health = (json.loads(r.health) if isinstance(r.health, str | bytes) else r.health) or {}
        seen = as_utc(r.last_seen_at)
        status = r.state or "unknown"
        if status == "online" and seen is not None and seen < now - timedelta(seconds=silent_after_s):
            status = "silent"  # as the monitor's fleet table says it
        pos = placed.pop(r.device_id, None)
        out.append(DeviceHealth(
            r.device_id, status, seen, r.agent_version, health.get("outbox_depth"),
            int(sum((health.get("dropped") or {}).values())), (float(pos[0]), float(pos[1])) if pos else None,
        ))  # fmt: skip
    for dev, pos in sorted(placed.items()):  # placed on the map but never reported
        out.append(DeviceHealth(dev, "unknown", None, None, None, 0, (float(pos[0]), float(pos[1]))))
    return out


def _detections(
    db: _Db, farm: str, devs: list[str], start: datetime, end: datetime, bucket: str
) -> dict[str, dict[datetime, int]]:
    if not devs:
        return {}
    b = db.bucket("observed_at", bucket)
    rows = db.rows(
        f"SELECT {b} AS tb, label, COUNT(*) AS n FROM detections WHERE farm_id = :f AND device_id IN :d "
        f"AND observed_at >= :t0 AND observed_at < :t1 GROUP BY {b}, label",
        {"f": farm, "d": devs, "t0": db.ts(start), "t1": db.ts(end)},
        ("d",),
    )
    out: dict[str, dict[datetime, int]] = defaultdict(dict)
    for r in rows:
        name = display_name(r.label)
        t = _bucket_time(r.tb)
        out[name][t] = out[name].get(t, 0) + int(r.n)
    return dict(out)


def _alerts(db: _Db, farm: str, start: datetime, end: datetime) -> tuple[list[OpenAlert], int, int]:
    p = {"f": farm, "t0": db.ts(start), "t1": db.ts(end)}
    rows = db.rows(
        "SELECT id, severity, rule, message, raised_at, acknowledged_by FROM alerts WHERE farm_id = :f "
        "AND raised_at < :t1 AND (resolved_at IS NULL OR resolved_at >= :t1) ORDER BY raised_at DESC",
        p,
    )
    open_ = [OpenAlert(int(r.id), r.severity, r.rule, r.message, as_utc(r.raised_at) or end, r.acknowledged_by)
             for r in rows]  # fmt: skip
    open_.sort(key=lambda a: (SEVERITY_ORDER.get(a.severity, 9), -a.raised_at.timestamp()))
    counts = db.rows(
        "SELECT SUM(CASE WHEN raised_at >= :t0 AND raised_at < :t1 THEN 1 ELSE 0 END) AS raised, "
        "SUM(CASE WHEN resolved_at >= :t0 AND resolved_at < :t1 THEN 1 ELSE 0 END) AS resolved "
        "FROM alerts WHERE farm_id = :f",
        p,
    )[0]
    return open_, int(counts.raised or 0), int(counts.resolved or 0)


def _yields(db: _Db, farm: str, start: datetime, end: datetime) -> list[YieldOutlook]:
    def latest(before: datetime) -> dict[str, Any]:
        rows = db.rows(
            "SELECT y.field_id, y.crop, y.observed_at, y.p10, y.p50, y.p90, y.unit, y.days_into_season "
            "FROM yield_estimates y JOIN (SELECT field_id, MAX(observed_at) AS last FROM yield_estimates "
            "WHERE farm_id = :f AND observed_at < :t GROUP BY field_id) l "
            "ON y.field_id = l.field_id AND y.observed_at = l.last WHERE y.farm_id = :f ORDER BY y.field_id",
            {"f": farm, "t": db.ts(before)},
        )
        return {r.field_id: r for r in rows if r.field_id}

    now, then = latest(end), latest(start)
    return [
        YieldOutlook(
            fid,
            r.crop,
            r.unit,
            float(r.p10),
            float(r.p50),
            float(r.p90),
            int(r.days_into_season),
            as_utc(r.observed_at) or end,
            float(then[fid].p50) if fid in then else None,
        )
        for fid, r in now.items()
    ]


def _sensors(db: _Db, farm: str, start: datetime, end: datetime, bucket: str) -> list[SensorTrend]:
    b = db.bucket("observed_at", bucket)
    p = {"f": farm, "t0": db.ts(start), "t1": db.ts(end)}
    rows = db.rows(
        f"SELECT field_id, quantity, {b} AS tb, AVG(value) AS mean FROM telemetry WHERE farm_id = :f "
        f"AND observed_at >= :t0 AND observed_at < :t1 GROUP BY field_id, quantity, {b} ORDER BY 1, 2, 3",
        p,
    )
    stats = {
        (r.field_id, r.quantity): r
        for r in db.rows(
            "SELECT field_id, quantity, MIN(value) AS low, AVG(value) AS mean, MAX(value) AS high FROM telemetry "
            "WHERE farm_id = :f AND observed_at >= :t0 AND observed_at < :t1 GROUP BY field_id, quantity",
            p,
        )
    }
    series: dict[tuple[str, str], list[tuple[datetime, float]]] = defaultdict(list)
    for r in rows:
        series[(r.field_id or "-", r.quantity)].append((_bucket_time(r.tb), float(r.mean)))
    out = []
    for (fid, quantity), points in sorted(series.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        s = stats.get((None if fid == "-" else fid, quantity))
        out.append(SensorTrend(
            quantity, CANONICAL_UNITS.get(quantity, "?"), fid,  # type: ignore[call-overload]
            [t for t, _ in points], [v for _, v in points],
            float(s.low) if s else min(v for _, v in points), float(s.mean) if s else 0.0,
            float(s.high) if s else max(v for _, v in points), points[-1][1],
        ))  # fmt: skip
    return out
