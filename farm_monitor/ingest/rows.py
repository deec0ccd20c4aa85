"""Message kinds ingest stores: one registry entry per kind (message model, table, row values).

The hot path writes with the DB-API's executemany on plain tuples: building ORM objects or
SQLAlchemy parameter dicts per statement costs more than the insert itself at 10,000 messages/s.
Each builder names its values by column; the tuple order and the ``INSERT`` come from the ORM
table in :mod:`farm_monitor.db.models`, so a table's columns are written once, there. Values are
converted exactly as SQLAlchemy's column types would store them, so the ORM reads these rows back.

Adding a message kind here is one :data:`KINDS` entry and its values function. An optional part of
a message that has a table of its own (telemetry's radio link) is a :class:`Part` of its kind.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from operator import itemgetter
from typing import Any, Generic, Protocol, TypeVar

from pydantic import TypeAdapter
from sqlalchemy import Table

from shared import messages as m

from ..db.dialect import insert_columns
from ..db.models import (
    Base,
    DeadLetter,
    Detection,
    EventRow,
    GatewayStatusRow,
    LabelRow,
    RadioLinkRow,
    SampleRow,
    StatusReport,
    TelemetryReading,
    YieldEstimate,
    table_of,
)

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
# pydantic's Rust serializers: 3-4x faster than model_dump + json for the nested parts.
_TOP_K = TypeAdapter(list[m.LabelScore])
_MODELS = TypeAdapter(list[m.ActiveModel])

Row = tuple[Any, ...]
Values = dict[str, Any]
M = TypeVar("M", bound=m.Envelope)


class Converter(Protocol):
    """What the builders need of :class:`farm_monitor.db.dialect.Dialect` (tests pass a stub)."""

    @property
    def ts(self) -> Callable[..., Any]: ...

    @property
    def date(self) -> Callable[..., Any]: ...


def _tuple_of(table: Table) -> Callable[[Values], Row]:
    columns = insert_columns(table)
    pick = itemgetter(*columns)
    # itemgetter with one key returns the value itself, not a 1-tuple; every table here has more.
    assert len(columns) > 1, table.name
    return pick


class Part(Generic[M]):
    """An optional part of a message stored in a table of its own: at most one row per message."""

    def __init__(self, orm: type[Base], values: Callable[[Converter, M, Any], Values | None]) -> None:
        self.table = table_of(orm)
        self._pick = _tuple_of(self.table)
        self.values = values

    def row(self, d: Converter, msg: M, received: Any) -> Row | None:
        """The part's row, or None when the message does not have the part."""
        values = self.values(d, msg, received)
        return None if values is None else self._pick(values)


class Kind(Generic[M]):
    """How one message kind becomes rows: its contract model, its ORM table and its parts' tables.

    A kind's values function names each column's value; the tuples for ``executemany`` take them
    in the table's column order (a missing column is a ``KeyError``: that message is dead-lettered).
    """

    def __init__(self, model: type[M], orm: type[Base], parts: tuple[Part[M], ...] = ()) -> None:
        self.model = model
        self.table = table_of(orm)
        self._pick = _tuple_of(self.table)
        self.parts = parts

    def rows(self, d: Converter, msg: M, received: Any) -> list[Row]:
        raise NotImplementedError

    def part_rows(self, d: Converter, msg: M, received: Any) -> list[tuple[str, Row]]:
        """(table, row) for each part the message has."""
        out = []
        for part in self.parts:
            row = part.row(d, msg, received)
            if row is not None:
                out.append((part.table.name, row))
        return out


class OneRow(Kind[M]):
    """A kind stored as one row per message."""

    def __init__(
        self, model: type[M], orm: type[Base], values: Callable[[Converter, M, Any], Values],
        parts: tuple[Part[M], ...] = (),
    ) -> None:  # fmt: skip
        super().__init__(model, orm, parts)
        self.values = values

    def rows(self, d: Converter, msg: M, received: Any) -> list[Row]:
        return [self._pick(self.values(d, msg, received))]


class RowPerItem(Kind[M]):
    """A kind stored as several rows per message (telemetry: one per reading)."""

    def __init__(
        self, model: type[M], orm: type[Base], values: Callable[[Converter, M, Any], list[Values]],
        parts: tuple[Part[M], ...] = (),
    ) -> None:  # fmt: skip
        super().__init__(model, orm, parts)
        self.values = values

    def rows(self, d: Converter, msg: M, received: Any) -> list[Row]:
        pick = self._pick
        return [pick(v) for v in self.values(d, msg, received)]


def _header(d: Converter, msg: m.Envelope, received: Any) -> Values:
    return {
        "msg_id": msg.msg_id, "farm_id": msg.farm_id, "device_id": msg.device_id,
        "observed_at": d.ts(msg.observed_at), "received_at": received,
    }  # fmt: skip


def dumps(value: Any) -> str:
    return _dumps(value)


def _detection(d: Converter, msg: m.Detection, received: Any) -> Values:
    ref = msg.model
    top = msg.top_k[0]
    return {
        **_header(d, msg, received), "field_id": msg.field_id, "model_name": ref.name,
        "model_version": ref.version, "model_sha256": ref.sha256, "model_variant": ref.variant,
        "source": msg.source, "image_ref": msg.image_ref, "image_sha256": msg.image_sha256, "label": top.label,
        "confidence": top.probability, "top_k": _TOP_K.dump_json(msg.top_k).decode(), "inference_ms": msg.inference_ms,
        "shadow": msg.shadow.model_dump_json() if msg.shadow is not None else None, "status": msg.status,
        "trust_score": msg.trust_score,
    }  # fmt: skip


def _yield(d: Converter, msg: m.YieldEstimate, received: Any) -> Values:
    ref, q = msg.model, msg.quantiles
    return {
        **_header(d, msg, received), "field_id": msg.field_id, "model_name": ref.name,
        "model_version": ref.version, "model_sha256": ref.sha256, "crop": msg.crop,
        "season_start": d.date(msg.season_start), "days_into_season": msg.days_into_season,
        "season_progress": msg.season_progress, "expected": msg.expected, "p10": q.p10, "p50": q.p50,
        "p90": q.p90, "unit": msg.unit,
    }  # fmt: skip


def _telemetry(d: Converter, msg: m.Telemetry, received: Any) -> list[Values]:
    head = {**_header(d, msg, received), "field_id": msg.field_id, "interval_s": msg.interval_s}
    out = []
    for i, r in enumerate(msg.readings):
        out.append(
            {**head, "reading_index": i, "sensor": r.sensor, "quantity": r.quantity, "value": r.value, "unit": r.unit,
             "value_min": r.min, "value_mean": r.mean, "value_max": r.max, "value_count": r.count}
        )  # fmt: skip
    return out


def _radio_link(d: Converter, msg: m.Telemetry, received: Any) -> Values | None:
    link = msg.link
    if link is None:
        return None
    return {
        **_header(d, msg, received), "rssi_dbm": link.rssi_dbm, "snr_db": link.snr_db,
        "frame_counter": link.frame_counter, "gateway_id": link.gateway_id, "gateways": link.gateways,
    }  # fmt: skip


def _sample(d: Converter, msg: m.Sample, received: Any) -> Values:
    ref = msg.model
    return {
        **_header(d, msg, received), "field_id": msg.field_id, "reason": msg.reason,
        "model_name": ref.name if ref else None, "model_version": ref.version if ref else None,
        "detection_msg_id": msg.detection_msg_id, "source": msg.source, "image_ref": msg.image_ref,
        "predicted_label": msg.predicted_label, "confidence": msg.confidence, "width": msg.width,
        "height": msg.height, "image_size": len(msg.image_jpeg), "image_jpeg": msg.image_jpeg,
    }  # fmt: skip


def _status(d: Converter, msg: m.Status, received: Any) -> Values:
    return {
        **_header(d, msg, received), "state": msg.state, "since": d.ts(msg.since),
        "agent_version": msg.agent_version, "models": _MODELS.dump_json(msg.models).decode(),
        "health": msg.health.model_dump_json() if msg.health is not None else None, "reason": msg.reason,
    }  # fmt: skip


def _event(d: Converter, msg: m.Event, received: Any) -> Values:
    return {
        **_header(d, msg, received), "level": msg.level, "code": msg.code, "message": msg.message,
        "details": _dumps(msg.details) if msg.details else None,
    }  # fmt: skip


def _gateway_status(d: Converter, msg: m.GatewayStatus, received: Any) -> Values:
    def ts(value: Any) -> Any:
        return None if value is None else d.ts(value)

    return {
        **_header(d, msg, received), "bridge": msg.bridge, "uplink": msg.uplink,
        "uplink_since": ts(msg.uplink_since), "backlog_since": ts(msg.backlog_since),
        "queued_bytes": msg.queued_bytes, "queued_messages": msg.queued_messages,
        "disk_free_bytes": msg.disk_free_bytes, "disk_total_bytes": msg.disk_total_bytes,
        "gateway_version": msg.gateway_version,
    }  # fmt: skip


def _label(d: Converter, msg: m.LabelMessage, received: Any) -> Values:
    # A farm's label lands in the labels table itself, so the cloud's export and retraining see it.
    return {
        "msg_id": msg.msg_id, "sample_msg_id": msg.sample_msg_id, "label": msg.label,
        "labelled_by": msg.labelled_by, "labelled_at": d.ts(msg.labelled_at), "note": msg.note,
    }  # fmt: skip


# kind (the topic's last segment) -> how ingest stores it. A kind the contract accepts but that
# has no entry here is dead-lettered as ``unknown_kind``, never stored somewhere by default.
KINDS: dict[str, Kind[Any]] = {
    "detection": OneRow(m.Detection, Detection, _detection),
    "yield": OneRow(m.YieldEstimate, YieldEstimate, _yield),
    "telemetry": RowPerItem(m.Telemetry, TelemetryReading, _telemetry, parts=(Part(RadioLinkRow, _radio_link),)),
    "sample": OneRow(m.Sample, SampleRow, _sample),
    "status": OneRow(m.Status, StatusReport, _status),
    "event": OneRow(m.Event, EventRow, _event),
    "gateway_status": OneRow(m.GatewayStatus, GatewayStatusRow, _gateway_status),
    "label": OneRow(m.LabelMessage, LabelRow, _label),
}

DEAD_LETTERS = table_of(DeadLetter)
COLUMNS: dict[str, tuple[str, ...]] = {
    t.name: insert_columns(t)
    for t in [*(k.table for k in KINDS.values()), *(p.table for k in KINDS.values() for p in k.parts), DEAD_LETTERS]
}
# A dead letter's values (named by column) as the tuple its INSERT takes.
dead_letter_row = _tuple_of(DEAD_LETTERS)
