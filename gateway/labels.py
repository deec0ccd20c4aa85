"""Labels people made in the farm's own monitor, as ``label`` messages for the bridge to carry up.

The monitor gives every label a msg_id (a ULID) when it stores it; the reporter sends the labels
after a cursor kept in a file, and moves the cursor only after the gateway broker acknowledged a
label (then it is in the bridge's persistent queue). A label sent twice is stored once: the
cloud's ``labels.msg_id`` is unique. Labels made before migration 7 have no msg_id and stay local.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import inspect, select

from farm_monitor.db import make_engine
from farm_monitor.db.models import LabelRow, SampleRow
from shared import SCHEMA_VERSION
from shared.fsutil import atomic_write_text
from shared.messages import LabelMessage
from shared.topics import device_topic

logger = logging.getLogger(__name__)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


class LabelUplink:
    def __init__(self, database_url: str, farm_id: str, gateway_id: str, cursor_file: str | Path) -> None:
        self.engine = make_engine(database_url)
        self.farm_id = farm_id
        self.gateway_id = gateway_id
        self.topic = device_topic(farm_id, gateway_id, "label")
        self.cursor_file = Path(cursor_file)

    @property
    def cursor(self) -> str:
        try:
            return self.cursor_file.read_text().strip()
        except FileNotFoundError:
            return ""

    def advance(self, msg_id: str) -> None:
        atomic_write_text(self.cursor_file, msg_id + "\n")

    def pending(self, limit: int = 200) -> list[LabelMessage]:
        stmt = (
            select(LabelRow)
            .join(SampleRow, SampleRow.msg_id == LabelRow.sample_msg_id)
            .where(SampleRow.farm_id == self.farm_id, LabelRow.msg_id.is_not(None), LabelRow.msg_id > self.cursor)
            .order_by(LabelRow.msg_id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            if not inspect(conn).has_table("labels"):
                return []  # the local ingest has not created the database yet
            rows = conn.execute(stmt).all()
        return [
            LabelMessage(
                schema_version=SCHEMA_VERSION,
                msg_id=r.msg_id,
                farm_id=self.farm_id,
                device_id=self.gateway_id,
                observed_at=_utc(r.labelled_at),
                sample_msg_id=r.sample_msg_id,
                label=r.label,
                labelled_by=r.labelled_by,
                labelled_at=_utc(r.labelled_at),
                note=r.note,
            )
            for r in rows
        ]

    def close(self) -> None:
        self.engine.dispose()
