"""The outbox's row types and the per-row byte overhead, shared by the outbox and its uplink picking."""

from __future__ import annotations

from dataclasses import dataclass

# Bytes a row costs beyond its payload and topic (keys, indexes, page slack), for the budget.
ROW_OVERHEAD = 96


@dataclass(frozen=True)
class OutMessage:
    msg_id: str
    kind: str
    topic: str
    payload: bytes
    # Overrides the kind's priority: an `uncertain` sample is kept over budget like a detection.
    priority: int | None = None


@dataclass(frozen=True)
class Row:
    id: int
    msg_id: str
    kind: str
    topic: str
    payload: bytes
    created: float
