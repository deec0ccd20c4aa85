"""The words and the picture of a notification.

Language-neutral: labelled values and symbols rather than sentences (farm, field, disease display
name, share of detections, times in UTC, links), so a message reads the same to every subscriber
and a translation layer never stands between an alert and a phone.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from sqlalchemy import Connection

from shared.display_names import display_name

from ..db.dialect import Dialect
from .policy import AlertView

logger = logging.getLogger(__name__)

_MARK = {"critical": "🔴", "warning": "🟠", "info": "🔵"}
_EVENT = {"raised": "", "escalated": "⏫ ESCALATED · ", "resolved": "✅ RESOLVED · "}


@dataclass(frozen=True)
class Message:
    title: str
    body: str


def _details(alert: AlertView) -> dict[str, Any]:
    doc = alert.details
    if isinstance(doc, str | bytes):
        try:
            doc = json.loads(doc)
        except ValueError:
            return {}
    return doc if isinstance(doc, dict) else {}


def subject(alert: AlertView) -> str:
    """What the alert is about, in a few words: the disease, or the device."""
    label = _details(alert).get("label")
    if alert.rule == "disease" and isinstance(label, str):
        return display_name(label)
    return alert.device_id or alert.rule


def compose(alert: AlertView, event: str, severity: str, monitor_url: str, ack_url: str | None) -> Message:
    where = " / ".join(x for x in (alert.farm_id, alert.field_id) if x)
    title = f"{_EVENT.get(event, '')}{_MARK.get(severity, '')} {severity.upper()} · {subject(alert)} · {where}"
    doc = _details(alert)
    lines = [f"⚑ {alert.rule} · {severity}", f"Farm: {alert.farm_id}"]
    if alert.field_id:
        lines.append(f"Field: {alert.field_id}")
    if alert.device_id:
        lines.append(f"Device: {alert.device_id}")
    if alert.rule == "disease" and "label" in doc:
        lines.append(f"Disease: {display_name(str(doc['label']))}")
        if "percent" in doc and "total" in doc:
            lines.append(f"Share: {float(doc['percent']):.0f}% ({doc.get('count', '?')}/{doc['total']} detections)")
    lines.append(f"Raised: {alert.raised_at:%Y-%m-%d %H:%M} UTC")
    if event == "resolved" and alert.resolved_at is not None:
        lines.append(f"Resolved: {alert.resolved_at:%Y-%m-%d %H:%M} UTC")
    lines.append(f"# {alert.id}: {alert.message}")
    lines.append(f"Monitor: {monitor_url.rstrip('/')}/alerts")
    if ack_url:
        lines.append(f"Acknowledge: {ack_url}")
    return Message(title, "\n".join(lines))


def compose_digest(items: list[tuple[str, AlertView]], monitor_url: str) -> Message:
    """One message for what the rate cap held back, newest last."""
    lines = [f"Σ {len(items)} held back (rate cap):"]
    for event, alert in items:
        where = "/".join(x for x in (alert.farm_id, alert.field_id or alert.device_id) if x)
        lines.append(f"{_MARK.get(alert.severity, '')} #{alert.id} {event} · {subject(alert)} · {where} · "
                     f"{alert.raised_at:%m-%d %H:%M}")  # fmt: skip
    lines.append(f"Monitor: {monitor_url.rstrip('/')}/alerts")
    return Message(f"Σ Cropwatch digest · {len(items)} alerts", "\n".join(lines))


def thumbnail(conn: Connection, alert: AlertView, size_px: int, folder: Path) -> Path | None:
    """A small JPEG of one sample image from the alert's field (the disease's own, when there is one)."""
    if not alert.field_id:
        return None
    d = Dialect(conn)
    p = d.ph
    label = str(_details(alert).get("label", ""))
    row = conn.exec_driver_sql(
        f"SELECT msg_id, image_jpeg FROM samples WHERE farm_id = {p} AND field_id = {p} "
        f"ORDER BY CASE WHEN predicted_label = {p} THEN 0 ELSE 1 END, observed_at DESC LIMIT 1",
        (alert.farm_id, alert.field_id, label),
    ).first()
    if row is None:
        return None
    try:
        img = Image.open(io.BytesIO(bytes(row[1]))).convert("RGB")
        img.thumbnail((size_px, size_px))
        path = folder / f"alert-{alert.id}-{row[0]}.jpg"
        img.save(path, "JPEG", quality=82)
    except (OSError, ValueError):
        logger.warning("sample %s of alert %s is not a readable image; sending without a picture", row[0], alert.id)
        return None
    return path
