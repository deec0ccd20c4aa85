"""The labelled-sample export: labelled samples as class folders plus a path,label CSV.

The CSV is what ``cropwatch train disease --data labels.csv`` reads (columns ``path,label``,
paths relative to the CSV); the class folders work as ``--data DIR`` too. The current label of a
sample is its latest by ``labelled_at``. The retrainer reads it (``cropwatch retrain disease``), and
``cropwatch data export-labels`` (``farm_monitor.labels_cli``) writes it from the monitor's config.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, text

from farm_monitor.db.dialect import bind_timestamp
from shared.fsutil import atomic_write_bytes, atomic_write_text

logger = logging.getLogger(__name__)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.,()+-]+")

EXPORT_SQL = """
SELECT s.msg_id, s.farm_id, s.device_id, s.field_id, s.observed_at, s.predicted_label, s.confidence,
       s.model_name, s.model_version, s.image_jpeg, l.label, l.labelled_by, l.labelled_at
FROM labels l JOIN samples s ON s.msg_id = l.sample_msg_id
WHERE l.id = (SELECT l2.id FROM labels l2 WHERE l2.sample_msg_id = l.sample_msg_id
              ORDER BY l2.labelled_at DESC, l2.id DESC LIMIT 1)
"""
CSV_COLUMNS = ["path", "label", "msg_id", "farm_id", "device_id", "field_id", "observed_at", "predicted_label",
               "confidence", "model", "labelled_by", "labelled_at"]  # fmt: skip


def folder_name(label: str) -> str:
    """A class folder name for a label (labels are free text; folders must be safe path parts)."""
    name = _UNSAFE.sub("_", label.strip()).strip("._") or "unlabelled"
    return name[:100]


def export_labels(engine: Engine, out: Path, farms: list[str] | None = None, since: datetime | None = None) -> int:
    """Write ``out/<class>/<msg_id>.jpg`` and ``out/labels.csv``; return the number of samples."""
    sql = EXPORT_SQL
    params: dict[str, object] = {}
    if farms:
        sql += " AND s.farm_id IN (" + ", ".join(f":f{i}" for i in range(len(farms))) + ")"
        params.update({f"f{i}": f for i, f in enumerate(farms)})
    if since is not None:
        sql += " AND l.labelled_at >= :since"
        params["since"] = bind_timestamp(engine, since)
    sql += " ORDER BY s.msg_id"
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS)
    n = 0
    with engine.connect() as conn:
        for r in conn.execute(text(sql), params):
            rel = Path(folder_name(r.label)) / f"{r.msg_id}.jpg"
            (out / rel.parent).mkdir(exist_ok=True)
            atomic_write_bytes(out / rel, bytes(r.image_jpeg))
            writer.writerow([rel.as_posix(), r.label, r.msg_id, r.farm_id, r.device_id, r.field_id or "",
                             str(r.observed_at), r.predicted_label or "", r.confidence if r.confidence is not None
                             else "", f"{r.model_name or ''} {r.model_version or ''}".strip(), r.labelled_by,
                             str(r.labelled_at)])  # fmt: skip
            n += 1
    atomic_write_text(out / "labels.csv", buf.getvalue())
    logger.info("exported %d labelled samples to %s", n, out)
    return n
