"""The numbers of each report section (the table beside its chart) and the headline line.

Shared by the HTML, the plain text and the PDF pages, so all three say the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from .data import FarmData


@dataclass
class Section:
    key: str  # the chart's name in charts.CHARTS / chart_pngs
    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""


def cid(farm: str, chart: str) -> str:
    return f"{chart}.{farm}@report.cropwatch"


def headline(d: FarmData) -> str:
    total = sum(d.class_totals().values())
    sick = sum(n for name, n in d.class_totals().items() if "healthy" not in name.lower())
    online = sum(1 for x in d.devices if x.status == "online")
    crit = sum(1 for a in d.alerts if a.severity == "critical")
    parts = [f"{len(d.alerts)} open alert{'s' * (len(d.alerts) != 1)}" + (f" ({crit} critical)" if crit else "")]
    parts.append(f"{total} detections" + (f", {sick / total:.0%} with a disease" if total else ""))
    parts.append(f"{online} of {len(d.devices)} devices online")
    high = [f.name for f in d.fields if f.level == "high"]
    if high:
        parts.append("high risk: " + ", ".join(high))
    return " · ".join(parts)


def _n(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"


def farm_sections(d: FarmData) -> list[Section]:
    """Every section's numbers (the table beside its chart)."""
    totals = d.class_totals()
    total = sum(totals.values())
    yields = {y.field_id: y for y in d.yields}
    fields = [[f.name, f.crop or "—", f.level, f"{f.share:.0%}" if f.n else "—", str(f.n),
               f"{yields[f.field_id].p50:.1f}" if f.field_id in yields else "—"] for f in d.fields]  # fmt: skip
    alerts = [[a.severity, a.message, f"{a.raised_at:%d %b %H:%M}", a.acknowledged_by or "no"] for a in d.alerts]
    devices = [[x.device_id, x.status, f"{x.last_seen_at:%d %b %H:%M}" if x.last_seen_at else "never",
                "—" if x.outbox_depth is None else str(x.outbox_depth), str(x.dropped), x.agent_version or "—"]
               for x in d.devices]  # fmt: skip
    sensors = [[f"{s.quantity.replace('_', ' ')} ({s.unit})", s.field_id, _n(s.low), _n(s.mean), _n(s.high), _n(s.last)]
               for s in d.sensors]  # fmt: skip
    yrows = []
    for y in d.yields:
        change = "—" if y.p50_at_start is None else f"{y.p50 - y.p50_at_start:+.1f}"
        yrows.append([y.field_id, y.crop or "—", f"{y.p50:.1f} {y.unit}", f"{y.p10:.1f}–{y.p90:.1f}", change,
                      str(y.days_into_season)])  # fmt: skip
    return [
        Section("map", "Fields and disease risk", ["field", "crop", "risk", "disease", "detections", "yield p50"],
                fields, f"Risk: share of disease detections in the last {d.risk_window_h:.0f} h before the end "
                "of the period; grey: too few detections."),
        Section("detections", "Detections by class", ["class", "detections", "share"],
                [[k, str(v), f"{v / total:.0%}"] for k, v in totals.items()],
                f"{total} detections in the period."),
        Section("alerts", "Open alerts", ["severity", "alert", "raised", "ack by"], alerts,
                f"{d.alerts_raised} raised and {d.alerts_resolved} resolved in the period; times UTC."),
        Section("devices", "Device health", ["device", "status", "last heard", "outbox", "dropped", "agent"],
                devices, "Status as of when this report was built; times UTC."),
        Section("sensors", "Sensor trends", ["quantity", "field", "min", "mean", "max", "last"], sensors,
                f"Means per {d.bucket}; last: the latest {d.bucket}'s mean."),
        Section("yield", "Yield outlook", ["field", "crop", "median", "10–90 %", "change", "day"], yrows,
                "Latest forecast per field; change: since the start of the period."),
    ]  # fmt: skip
