"""The report's pictures, drawn with matplotlib's object API onto axes the caller owns.

The same drawing goes into a PNG for the mail (one figure per chart) and onto a PDF page beside
its numbers, so the two cannot disagree. ``Figure`` objects, never pyplot: no global state, so
the monitor can build reports from several sessions at once.
"""

from __future__ import annotations

import io
import math
from datetime import datetime, timedelta
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: a server or a test has no display

from matplotlib import dates as mdates
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import (
    Patch,
    Polygon as MplPolygon,
)
from matplotlib.ticker import MaxNLocator

from ..risk import RISK_COLOURS, STATUS_COLOURS
from .data import FarmData

DPI = 110
SEVERITY_COLOURS = {"critical": "#d73228", "warning": "#f0a01e", "info": "#5a8fd0"}
# Disease classes in warm colours, healthy ones in greens: a bar's colour says sick or not at a glance.
WARM = ["#d73228", "#f0a01e", "#a6361c", "#e8702a", "#8c2d5a", "#c9a227", "#7a4b2a", "#e0457b"]
GREENS = ["#2ea043", "#77c172", "#1b6b31", "#a7d99b"]


def rgb(colour: list[int]) -> tuple[float, float, float]:
    return (colour[0] / 255, colour[1] / 255, colour[2] / 255)


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})  # constrained layout: no "tight" pass
    return buf.getvalue()


def class_colours(names: list[str]) -> dict[str, str]:
    warm = iter(WARM * 4)
    green = iter(GREENS * 8)
    return {n: next(green) if "healthy" in n.lower() else next(warm) for n in names}


def _empty(ax: Axes, message: str) -> None:
    ax.set_axis_off()
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=9, color="#555", wrap=True, transform=ax.transAxes)


def draw_map(ax: Axes, data: FarmData) -> None:
    """Field polygons coloured by disease risk, devices as dots coloured by status, as the Overview map."""
    shapes = [f for f in data.fields if f.ring]
    placed = [d for d in data.devices if d.position]
    if not shapes and not placed:
        _empty(ax, "No field polygons or device locations for this farm:\nan admin adds them on the Farm layout page.")
        return
    lons = [c[0] for f in shapes for c in f.ring or []] + [d.position[0] for d in placed if d.position]
    lats = [c[1] for f in shapes for c in f.ring or []] + [d.position[1] for d in placed if d.position]
    for f in shapes:
        ax.add_patch(MplPolygon(f.ring or [], closed=True, facecolor=rgb(RISK_COLOURS[f.level]), alpha=0.7,
                                edgecolor="#282828", linewidth=1.0))  # fmt: skip
        cx = sum(c[0] for c in (f.ring or [])[:-1]) / max(1, len(f.ring or []) - 1)
        cy = sum(c[1] for c in (f.ring or [])[:-1]) / max(1, len(f.ring or []) - 1)
        share = f"{f.share:.0%} of {f.n}" if f.n else "no detections"
        top = max(c[1] for c in (f.ring or [(0.0, cy)]))
        # Between the centre and the top edge: devices usually stand at a field's centre.
        label = f"{f.name}\n{f.level} · {share}"
        box = {"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.75}
        ax.text(cx, (cy + top) / 2, label, ha="center", va="center", fontsize=8, weight="bold", color="#111", bbox=box)
    for d in placed:
        assert d.position is not None
        ax.scatter([d.position[0]], [d.position[1]], s=70, color=rgb(STATUS_COLOURS.get(d.status, [150] * 3)),
                   edgecolors="black", linewidths=0.8, zorder=3)  # fmt: skip
        ax.annotate(d.device_id, d.position, xytext=(5, -10), textcoords="offset points", fontsize=7)
    pad_x = (max(lons) - min(lons)) * 0.08 or 0.001
    pad_y = (max(lats) - min(lats)) * 0.08 or 0.001
    ax.set_xlim(min(lons) - pad_x, max(lons) + pad_x)
    ax.set_ylim(min(lats) - pad_y, max(lats) + pad_y)
    # Degrees of longitude shrink with latitude: this keeps a square field square.
    ax.set_aspect(1 / max(0.05, math.cos(math.radians((min(lats) + max(lats)) / 2))))
    ax.tick_params(labelsize=7)
    ax.xaxis.set_major_locator(MaxNLocator(3))
    ax.yaxis.set_major_locator(MaxNLocator(4))
    ax.ticklabel_format(useOffset=False)
    ax.set_xlabel("longitude", fontsize=7)
    ax.set_ylabel("latitude", fontsize=7)
    handles: list[Any] = [Patch(facecolor=rgb(RISK_COLOURS[k]), alpha=0.7, label=f"{k} risk")
                          for k in ("high", "medium", "low", "unknown")]  # fmt: skip
    handles += [Line2D([], [], marker="o", ls="", mec="black", mfc=rgb(STATUS_COLOURS[k]), label=f"device {k}")
                for k in ("online", "silent", "offline")]  # fmt: skip
    ax.legend(handles=handles, fontsize=6.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(f"Disease risk, last {data.risk_window_h:.0f} h before {data.end:%d %b %H:%M} UTC", fontsize=9)


def _time_axis(ax: Axes, data: FarmData) -> None:
    ax.set_xlim(mdates.date2num(data.start), mdates.date2num(data.end))
    if data.bucket == "hour":
        ax.xaxis.set_major_locator(mdates.HourLocator(byhour=range(0, 24, 6)))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%d %b\n%H:%M"))
    else:
        ax.xaxis.set_major_locator(mdates.AutoDateLocator(minticks=3, maxticks=8))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%d %b"))
    ax.tick_params(labelsize=7)
    ax.grid(axis="y", alpha=0.3)


def draw_detections(ax: Axes, data: FarmData) -> None:
    """Stacked bars of detections per class, one bar per hour (daily report) or day (longer)."""
    totals = data.class_totals()
    if not totals:
        _empty(ax, "No detections in this period.")
        return
    step = timedelta(hours=1) if data.bucket == "hour" else timedelta(days=1)
    times = sorted({t for by in data.detections.values() for t in by})
    colours = class_colours(list(totals))
    bottom = [0] * len(times)
    for name in totals:
        counts = [data.detections[name].get(t, 0) for t in times]
        centres = [mdates.date2num(t + step / 2) for t in times]
        ax.bar(centres, counts, width=0.85 * (step / timedelta(days=1)), bottom=bottom, color=colours[name],
               label=f"{name} ({totals[name]})")  # fmt: skip
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    _time_axis(ax, data)
    ax.set_ylabel(f"detections per {data.bucket}", fontsize=7)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0, max(bottom) * 1.35)  # head room for the legend inside the axes
    ax.legend(fontsize=6.5, loc="upper left", framealpha=0.85, ncols=2 if len(totals) > 3 else 1)
    ax.set_title("Detections by class", fontsize=9)


def draw_alerts(ax: Axes, data: FarmData) -> None:
    """Open alerts by rule, stacked by severity."""
    if not data.alerts:
        _empty(ax, "No open alerts at the end of the period.")
        return
    rules = sorted({a.rule for a in data.alerts})
    left = [0] * len(rules)
    for sev in ("critical", "warning", "info"):
        counts = [sum(1 for a in data.alerts if a.rule == r and a.severity == sev) for r in rules]
        if any(counts):
            ax.barh([r.replace("_", " ") for r in rules], counts, left=left, color=SEVERITY_COLOURS[sev], label=sev,
                    height=0.6)  # fmt: skip
            left = [a + b for a, b in zip(left, counts, strict=True)]
    ax.set_ylim(max(len(rules), 4) - 0.5, -0.5)  # a few alerts keep thin bars
    ax.set_xlim(0, max(left) * 1.3)
    ax.xaxis.get_major_locator().set_params(integer=True)  # type: ignore[call-arg]
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, frameon=False, loc="lower right")
    ax.set_title(f"Open alerts ({len(data.alerts)})", fontsize=9)


def draw_devices(ax: Axes, data: FarmData) -> None:
    """Hours since each device was last heard from, coloured by status (longest silence on top)."""
    if not data.devices:
        _empty(ax, "No devices have reported for this farm.")
        return
    devs = sorted(data.devices, key=lambda d: -_age_h(d.last_seen_at, data.end))[:30]
    ages = [_age_h(d.last_seen_at, data.end) for d in devs]
    cap = max(1.0, max((a for a in ages if math.isfinite(a)), default=1.0))
    shown = [min(a, cap * 1.05) if math.isfinite(a) else cap * 1.05 for a in ages]
    ax.barh([d.device_id for d in devs], [max(s, cap * 0.01) for s in shown], height=0.6,
            color=[rgb(STATUS_COLOURS.get(d.status, [150] * 3)) for d in devs])  # fmt: skip
    for i, (d, a) in enumerate(zip(devs, ages, strict=True)):
        label = f" {d.status}, " + ("never seen" if not math.isfinite(a) else _age_text(a))
        ax.text(shown[i], i, label, va="center", fontsize=7)
    ax.set_ylim(max(len(devs), 6) - 0.5, -0.5)
    ax.set_xlim(0, cap * 1.6)
    ax.tick_params(labelsize=7)
    ax.set_xlabel("hours since last heard from", fontsize=7)
    ax.set_title("Device health", fontsize=9)


def _age_h(seen: datetime | None, now: datetime) -> float:
    return math.inf if seen is None else max(0.0, (now - seen).total_seconds() / 3600)


def _age_text(hours: float) -> str:
    return (
        f"{hours * 60:.0f} min ago" if hours < 1 else f"{hours:.0f} h ago" if hours < 48 else f"{hours / 24:.0f} d ago"
    )


def draw_sensors(fig: Figure, data: FarmData, spec: Any = None) -> None:
    """One small chart per quantity (unit in the title), a line per field: every quantity the farm reported."""
    quantities = sorted({s.quantity for s in data.sensors})
    if not quantities:
        _empty(fig.add_subplot(spec or 111), "No sensor readings in this period.")
        return
    cols = 2 if len(quantities) > 1 else 1
    rows = math.ceil(len(quantities) / cols)
    # On a PDF page the caller's grid has no layout engine, so the gaps are set here; a figure of its
    # own is laid out by matplotlib (constrained).
    grid = spec.subgridspec(rows, cols, hspace=0.7, wspace=0.25) if spec is not None else fig.add_gridspec(rows, cols)
    fields = sorted({s.field_id for s in data.sensors})
    palette = dict(zip(fields, ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#17becf"] * 10, strict=False))
    for i, q in enumerate(quantities):
        ax = fig.add_subplot(grid[i // cols, i % cols])
        half = (timedelta(hours=1) if data.bucket == "hour" else timedelta(days=1)) / 2
        for s in (s for s in data.sensors if s.quantity == q):
            ms = 2.5 if len(s.times) < 30 else 0  # dots only where a line alone could hide a lone point
            times = [mdates.date2num(t + half) for t in s.times]
            ax.plot(times, s.means, color=palette[s.field_id], lw=1.2, label=s.field_id, marker="o", ms=ms)
        unit = next(s.unit for s in data.sensors if s.quantity == q)
        ax.set_title(f"{q.replace('_', ' ')} ({unit})", fontsize=8)
        _time_axis(ax, data)
        if data.bucket == "day":
            ax.xaxis.set_major_locator(mdates.DayLocator(interval=max(1, round((data.end - data.start).days / 3))))
        ax.tick_params(labelsize=6)
        if i == 0:
            ax.legend(fontsize=6, frameon=False, title="field", title_fontsize=6)


def draw_yield(ax: Axes, data: FarmData) -> None:
    """Each field's latest forecast: the 10-90 % interval as a bar, the median as a dot, where it stood at the start."""
    if not data.yields:
        _empty(ax, "No yield forecasts yet (a device running a yield model sends them).")
        return
    ys = list(range(len(data.yields)))
    for y, f in zip(ys, data.yields, strict=True):
        ax.plot([f.p10, f.p90], [y, y], color="#2ea043", lw=8, alpha=0.35, solid_capstyle="butt")
        ax.plot([f.p50], [y], "o", color="#1b6b31", ms=7)
        ax.text(f.p90, y, f"  {f.p50:.1f} ({f.p10:.1f}–{f.p90:.1f})", va="center", fontsize=7)
        if f.p50_at_start is not None and abs(f.p50_at_start - f.p50) > 1e-9:
            ax.annotate("", xy=(f.p50, y), xytext=(f.p50_at_start, y),
                        arrowprops={"arrowstyle": "->", "color": "#555", "lw": 1})  # fmt: skip
            ax.plot([f.p50_at_start], [y], "o", mfc="white", mec="#555", ms=6)
    ax.set_yticks(ys, [f.field_id for f in data.yields])
    ax.invert_yaxis()
    lo = min(f.p10 for f in data.yields)
    hi = max(f.p90 for f in data.yields)
    ax.set_xlim(lo - (hi - lo) * 0.15 - 1e-6, hi + (hi - lo) * 0.6 + 1e-6)
    ax.set_ylim(max(len(ys), 4) - 0.5, -0.5)
    ax.tick_params(labelsize=7)
    ax.set_xlabel(f"forecast yield ({data.yields[0].unit}); bar 10–90 %, dot median, ring at period start", fontsize=7)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("Yield outlook", fontsize=9)


CHARTS = {
    "map": (draw_map, (6.4, 4.0)),
    "detections": (draw_detections, (6.4, 2.8)),
    "alerts": (draw_alerts, (5.0, 2.2)),
    "devices": (draw_devices, (5.6, 2.4)),
    "yield": (draw_yield, (5.6, 2.2)),
}


def chart_pngs(data: FarmData) -> dict[str, bytes]:
    """Every chart of one farm as a PNG (name -> bytes), for the mail and the monitor page."""
    out: dict[str, bytes] = {}
    for name, (draw, size) in CHARTS.items():
        fig = Figure(figsize=size, layout="constrained")
        draw(fig.add_subplot(), data)
        out[name] = png(fig)
    rows = max(1, math.ceil(len({s.quantity for s in data.sensors}) / 2))
    fig = Figure(figsize=(6.4, 1.9 * rows + 0.4), layout="constrained")
    draw_sensors(fig, data)
    out["sensors"] = png(fig)
    return out
