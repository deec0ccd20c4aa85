"""The farm report: one farm (or every farm) over one period, as HTML with inline PNGs and as a PDF.

Pictures first, numbers beside them: each section is a chart with the table it was drawn from at
its right, in the mail and on the PDF page alike (the same :class:`Section` feeds both).
"""

from __future__ import annotations

import html
import io
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from matplotlib.backends.backend_pdf import PdfPages
from sqlalchemy import Engine, text

from ..config import DiseaseRule
from ..layout import FarmLayout
from .charts import chart_pngs
from .data import FarmData, as_utc, load_farm_data
from .pdf import render_pdf
from .sections import Section, cid, farm_sections, headline

logger = logging.getLogger(__name__)


@dataclass
class FarmReport:
    subject: str
    html: str
    images: dict[str, bytes]  # Content-ID (without <>) -> PNG; the HTML says cid:<key>
    pdf: bytes
    text: str = ""  # the plain-text alternative: the same numbers, no pictures
    pdf_name: str = "cropwatch-report.pdf"
    farms: list[FarmData] = field(default_factory=list)
    summary: dict[str, str] = field(default_factory=dict)  # farm -> one line of headline numbers


def period_name(start: datetime, end: datetime) -> str:
    days = (end - start) / timedelta(days=1)
    return "daily" if abs(days - 1) < 0.05 else "weekly" if abs(days - 7) < 0.3 else "farm"


def period_text(start: datetime, end: datetime) -> str:
    last = end - timedelta(seconds=1)
    if start.date() == last.date():
        return f"{start:%a %d %b %Y}"
    return f"{start:%d %b} – {last:%d %b %Y}"


def report_farms(engine: Engine, layout: FarmLayout) -> list[str]:
    with engine.connect() as conn:
        seen = {r[0] for r in conn.execute(text("SELECT DISTINCT farm_id FROM devices"))}
    return sorted(seen | set(layout.farms()))


def build_farm_report(
    engine: Engine,
    farm: str | None,
    start: datetime,
    end: datetime,
    monitor_url: str,
    *,
    layout: FarmLayout | None = None,
    rule: DiseaseRule | None = None,
    risk_window_h: float = 72.0,
    silent_after_s: float = 1800.0,
) -> FarmReport:
    """The report of ``farm`` (None: every farm in the database and layout) for ``[start, end)``.

    ``layout``, ``rule``, ``risk_window_h`` and ``silent_after_s`` are the monitor's (``[app]``,
    ``[alerts]``), so the map's colours match what the Overview showed at ``end``.
    """
    if start.tzinfo is None or end.tzinfo is None or end <= start:
        raise ValueError("start and end must be time-zone-aware with start before end")
    layout = layout or FarmLayout()
    rule = rule or DiseaseRule()
    farms = [farm] if farm else report_farms(engine, layout)
    datas = [
        load_farm_data(
            engine, f, as_utc(start) or start, as_utc(end) or end, layout, rule, risk_window_h, silent_after_s
        )
        for f in farms
    ]
    images: dict[str, bytes] = {}
    blocks: list[str] = []
    summary: dict[str, str] = {}
    sections_by_farm: list[tuple[FarmData, list[Section], dict[str, bytes]]] = []
    for data in datas:
        pngs = chart_pngs(data)
        sections = farm_sections(data)
        summary[data.farm] = headline(data)
        for name, blob in pngs.items():
            images[cid(data.farm, name)] = blob
        blocks.append(farm_html(data, sections, summary[data.farm]))
        sections_by_farm.append((data, sections, pngs))
    kind = period_name(start, end)
    when = period_text(start, end)
    who = farm or ", ".join(farms) or "no farms"
    alerts = sum(len(d.alerts) for d in datas)
    subject = f"Cropwatch {kind} report · {who} · {when}" + (f" · {alerts} open alert{'s' * (alerts != 1)}"
                                                            if alerts else "")  # fmt: skip
    page = page_html(subject, when, monitor_url, blocks or ["<p>No farms to report on yet.</p>"])
    buf = io.BytesIO()
    with PdfPages(buf, metadata={"Title": subject, "Creator": "Cropwatch", "Subject": f"{kind} report"}) as pdf:
        render_pdf(pdf, subject, monitor_url, sections_by_farm)
    plain = page_text(subject, when, monitor_url, [(d, secs) for d, secs, _ in sections_by_farm])
    name = f"cropwatch-{kind}-{farm or 'farms'}-{(end - timedelta(seconds=1)):%Y-%m-%d}.pdf"
    return FarmReport(subject, page, images, buf.getvalue(), plain, name, datas, summary)


def page_text(subject: str, when: str, monitor_url: str, farms: list[tuple[FarmData, list[Section]]]) -> str:
    lines = [subject, f"Period {when}. Farm monitor: {monitor_url}", ""]
    for d, sections in farms:
        lines += [f"== Farm {d.farm} ==", headline(d), ""]
        for s in sections:
            lines.append(f"-- {s.title} --")
            lines += ["  " + " | ".join(s.header)] + ["  " + " | ".join(r) for r in s.rows]
            lines += [f"  ({s.note})" if s.note else "", ""]
    return "\n".join(lines)


TD = "padding:3px 6px;border-bottom:1px solid #e3e3e3;font-size:13px;vertical-align:top"
TH = "padding:3px 6px;border-bottom:2px solid #999;font-size:12px;text-align:left;color:#444"
RISK_BG = {"high": "#f6c9c5", "medium": "#fbe3bd", "low": "#cdebd3", "critical": "#f6c9c5", "warning": "#fbe3bd",
           "offline": "#f6c9c5", "silent": "#fbe3bd", "online": "#cdebd3"}  # fmt: skip


def _table_html(s: Section) -> str:
    if not s.rows:
        return f'<p style="color:#555;font-size:13px">{html.escape(s.note or "Nothing to show.")}</p>'
    head = "".join(f'<th style="{TH}">{html.escape(h)}</th>' for h in s.header)
    body = []
    for row in s.rows:
        cells = []
        for value in row:
            bg = RISK_BG.get(value)
            style = TD + (f";background:{bg}" if bg else "")
            cells.append(f'<td style="{style}">{html.escape(value)}</td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    note = f'<p style="color:#666;font-size:12px;margin:4px 0 0">{html.escape(s.note)}</p>' if s.note else ""
    return (f'<table cellspacing="0" style="border-collapse:collapse;width:100%"><tr>{head}</tr>{"".join(body)}'
            f"</table>{note}")  # fmt: skip


def farm_html(d: FarmData, sections: list[Section], headline_text: str) -> str:
    parts = [f'<h2 style="margin:24px 0 4px;font-size:20px">Farm {html.escape(d.farm)}</h2>',
             f'<p style="margin:0 0 12px;font-size:14px"><b>{html.escape(headline_text)}</b></p>']  # fmt: skip
    for s in sections:
        img = f'<img src="cid:{cid(d.farm, s.key)}" alt="{html.escape(s.title)}" width="560" style="max-width:100%">'
        parts.append(
            f'<h3 style="margin:18px 0 6px;font-size:16px">{html.escape(s.title)}</h3>'
            '<table cellspacing="0" cellpadding="0" style="width:100%"><tr>'
            f'<td style="vertical-align:top;width:58%;padding-right:12px">{img}</td>'
            f'<td style="vertical-align:top">{_table_html(s)}</td></tr></table>'
        )
    return "\n".join(parts)


def page_html(subject: str, when: str, monitor_url: str, blocks: list[str]) -> str:
    url = html.escape(monitor_url, quote=True)
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8">'
        f"<title>{html.escape(subject)}</title></head>"
        '<body style="font-family:Helvetica,Arial,sans-serif;color:#222;max-width:1100px;margin:0 auto;padding:12px">'
        f'<h1 style="font-size:22px;margin:0 0 4px">{html.escape(subject)}</h1>'
        f'<p style="margin:0;color:#555;font-size:13px">Period {html.escape(when)}. '
        f'Open the <a href="{url}">farm monitor</a> for live data, photos and to acknowledge alerts.</p>'
        + "\n".join(blocks)
        + '<p style="color:#888;font-size:11px;margin-top:24px">Sent by Cropwatch. Change how often you get this '
        f'report on the <a href="{url}">monitor</a>.</p></body></html>'
    )
