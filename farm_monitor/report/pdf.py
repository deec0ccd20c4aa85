"""The report as A4 PDF pages (matplotlib's PdfPages): per farm, three pages of two sections, each
a chart with its numbers at its right, drawn by the same functions as the mail's PNGs.

PdfPages rather than a second library: matplotlib already draws every chart, writes vector PDF,
and is one dependency for the monitor to carry; the report's text is short tables, which a
matplotlib table draws well enough (long alert messages are wrapped, long lists cut with "… N more").
"""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING, Any

from matplotlib.figure import Figure

from .charts import draw_alerts, draw_detections, draw_devices, draw_map, draw_sensors, draw_yield
from .sections import Section, headline

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.backends.backend_pdf import PdfPages

    from .data import FarmData

A4 = (8.27, 11.69)
LINE_IN = 0.17  # one table text line, inches
WRAP = {"alert": 36, "class": 30, "quantity": 18}
DRAW = {"map": draw_map, "detections": draw_detections, "alerts": draw_alerts, "devices": draw_devices,
        "yield": draw_yield}  # fmt: skip
PAGES = [("map", "detections"), ("alerts", "devices"), ("sensors", "yield")]


def render_pdf(
    pdf: PdfPages, subject: str, monitor_url: str, farms: list[tuple[FarmData, list[Section], dict[str, bytes]]]
) -> None:
    if not farms:
        fig = Figure(figsize=A4)
        fig.text(0.08, 0.94, subject, fontsize=13, weight="bold")
        fig.text(0.08, 0.91, "No farms to report on yet.", fontsize=10)
        pdf.savefig(fig)
        return
    for data, sections, _ in farms:
        by_key = {s.key: s for s in sections}
        for page_no, keys in enumerate(PAGES, start=1):
            fig = Figure(figsize=A4)
            _header(fig, subject, monitor_url, data, page_no)
            grid = fig.add_gridspec(2, 2, left=0.13, right=0.97, top=0.86, bottom=0.05, hspace=0.32,
                                    wspace=0.12, width_ratios=[1, 1.15])  # fmt: skip
            for row, key in enumerate(keys):
                section = by_key[key]
                if key == "sensors":
                    draw_sensors(fig, data, grid[row, 0])
                else:
                    DRAW[key](fig.add_subplot(grid[row, 0]), data)
                table_ax = fig.add_subplot(grid[row, 1])
                draw_table(fig, table_ax, section)
            pdf.savefig(fig)


def _header(fig: Figure, subject: str, monitor_url: str, data: FarmData, page_no: int) -> None:
    fig.text(0.08, 0.965, subject, fontsize=11.5, weight="bold")
    fig.text(0.08, 0.945, f"Farm {data.farm} · {data.start:%Y-%m-%d %H:%M} to {data.end:%Y-%m-%d %H:%M} UTC",
             fontsize=8.5, color="#444")  # fmt: skip
    fig.text(0.08, 0.927, headline(data), fontsize=8.5, weight="bold", color="#222")
    fig.text(0.08, 0.909, f"Monitor: {monitor_url}", fontsize=7.5, color="#1a5fb4", url=monitor_url)
    fig.text(0.97, 0.018, f"page {page_no} of {len(PAGES)} · {data.farm}", fontsize=7, color="#777", ha="right")


CHAR_IN = 0.058  # a 6.5 pt character, inches (DejaVu Sans, generous: digits and capitals are wide)


def _widths(header: list[str], rows: list[list[str]]) -> list[int]:
    return [max(len(line) for c in [h, *(r[j] for r in rows)] for line in c.split("\n")) + 2
            for j, h in enumerate(header)]  # fmt: skip


def _cell(header: str, value: str) -> str:
    width = WRAP.get(header)
    if width:
        return "\n".join(textwrap.wrap(value, width, max_lines=3, placeholder=" …")) or value
    return value if len(value) <= 22 else value[:21] + "…"


def draw_table(fig: Figure, ax: Axes, section: Section) -> None:
    """``section``'s rows as a table at the top of ``ax``, its title above and its note below."""
    ax.set_axis_off()
    ax.set_title(section.title, fontsize=9, loc="left")
    if not section.rows:
        ax.text(0, 1, section.note or "Nothing to show.", va="top", fontsize=8, color="#555", wrap=True)
        return
    height_in = ax.get_position().height * fig.get_size_inches()[1]
    budget = int(height_in / LINE_IN) - 3  # header and note lines
    rows: list[list[str]] = []
    used = 0
    for i, row in enumerate(section.rows):
        cells = [_cell(h, v) for h, v in zip(section.header, row, strict=True)]
        lines = max(c.count("\n") + 1 for c in cells)
        if used + lines > budget - (1 if i < len(section.rows) - 1 else 0):
            rows.append([f"… {len(section.rows) - i} more", *[""] * (len(row) - 1)])
            break
        rows.append(cells)
        used += lines
    widths = _widths(section.header, rows)
    avail = int(ax.get_position().width * fig.get_size_inches()[0] / CHAR_IN)
    wrap_cols = [j for j, h in enumerate(section.header) if h in WRAP]
    if sum(widths) > avail and wrap_cols:  # narrow the wrapped column until the table fits its axes
        j = wrap_cols[0]
        width = max(14, avail - (sum(widths) - widths[j]) - 2)
        for row, full in zip(rows, section.rows, strict=False):
            if not row[0].startswith("… "):
                row[j] = "\n".join(textwrap.wrap(full[j], width, max_lines=3, placeholder=" …"))
        widths = _widths(section.header, rows)
    total = sum(widths)
    table = ax.table(cellText=rows, colLabels=section.header, loc="upper left", cellLoc="left", colLoc="left",
                     colWidths=[w / total for w in widths])  # fmt: skip
    table.auto_set_font_size(False)
    table.set_fontsize(6.5)
    line = LINE_IN / height_in
    heights = [1] + [max(c.count("\n") + 1 for c in row) for row in rows]  # after any rewrap
    for (r, _c), cell in table.get_celld().items():
        text = cell.get_text().get_text()
        cell.set_height(line * heights[r] + line * 0.2)
        cell.set_edgecolor("#cccccc")
        cell.set_linewidth(0.4)
        if r == 0:
            cell.set_facecolor("#eeeeee")
            cell.get_text().set_fontweight("bold")
        elif text in BG:
            cell.set_facecolor(BG[text])
    _note(ax, section, sum(line * n + line * 0.2 for n in heights), line)


BG = {"high": "#f6c9c5", "medium": "#fbe3bd", "low": "#cdebd3", "critical": "#f6c9c5", "warning": "#fbe3bd",
      "offline": "#f6c9c5", "silent": "#fbe3bd", "online": "#cdebd3"}  # fmt: skip


def _note(ax: Any, section: Section, used_h: float, line: float) -> None:
    if section.note:
        ax.text(0, 1 - used_h - line * 0.6, "\n".join(textwrap.wrap(section.note, 60)), va="top", fontsize=6.5,
                color="#666", transform=ax.transAxes)  # fmt: skip
