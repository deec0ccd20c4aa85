"""The byte budget: what each message is worth to the farmer, and how much of the day's bytes it may use.

Value tiers, highest first:

- ``MUST`` (3): detections, yield outlooks, status changes, warning/error/critical events. Always
  sent (in a window), even over budget: they are what the device is for.
- ``USEFUL`` (2): telemetry (aggregated per interval on a metered link) and info events. Sent
  while today's bytes are under the day's allowance; otherwise they wait (see ``hold_s``).
- ``LABEL`` (1): samples for labelling (low confidence, shadow disagreement, requested). Sent
  while today's bytes are under 85 % of the allowance paced over the day, re-encoded smaller to
  fit; otherwise they wait.
- ``ROUTINE`` (0): random samples and debug events. Sent under 60 % of the paced allowance, else dropped.

The shares below 100 % and the pacing keep a reserve for the detections and telemetry still to
come that day. Bytes are
counted by :func:`message_wire_size` (topic plus payload as stored, JSON today).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Literal

from shared.wire import WireSettings, encoded_size

logger = logging.getLogger(__name__)

MUST, USEFUL, LABEL, ROUTINE = 3, 2, 1, 0
TIER_NAMES = {MUST: "must", USEFUL: "useful", LABEL: "label", ROUTINE: "routine"}
# Share of the day's allowance a tier may fill (today's bytes so far + this message).
CEILING = {USEFUL: 1.0, LABEL: 0.85, ROUTINE: 0.6}
_MUST_KINDS = ("detection", "yield", "status")
_ALERT_LEVELS = ("warning", "error", "critical")
# Below this a labelling image is not worth sending (about 96x96 at low quality).
MIN_SAMPLE_BYTES = 2500


def message_wire_size(topic: str, payload: bytes, wire: WireSettings | None = None) -> int:
    """Bytes a message costs on the link: topic plus payload, as the issue's broker-side listener counts.

    The single place bytes are counted for the budget. ``payload`` is the stored JSON; with a compact
    ``wire`` encoding it is the encoded size of one PUBLISH (an upper bound inside a batch).
    """
    if wire is not None and wire.encoding != "json":
        try:
            return encoded_size(payload, wire, topic)
        except Exception:  # not a valid message: it goes as stored and ingest dead-letters it
            logger.debug("cannot encode a %d-byte payload on %s; counting it as stored", len(payload), topic)
    return len(topic.encode("utf-8")) + len(payload)


def value_of(kind: str, payload: bytes) -> int:
    """The value tier of a stored message (payload is the message's JSON)."""
    if kind in _MUST_KINDS:
        return MUST
    if kind == "telemetry":
        return USEFUL
    if kind in ("event", "sample"):
        try:
            doc = json.loads(payload)
        except ValueError:
            return USEFUL
        if not isinstance(doc, dict):
            return USEFUL
        if kind == "event":
            level = doc.get("level")
            return MUST if level in _ALERT_LEVELS else ROUTINE if level == "debug" else USEFUL
        return ROUTINE if doc.get("reason") == "random" else LABEL
    return USEFUL


Action = Literal["send", "shrink", "hold", "drop"]


@dataclass(frozen=True)
class Decision:
    action: Action
    max_bytes: int | None = None
    """For ``shrink``: the size the message must fit."""


@dataclass
class Allowance:
    """Today's allowance and what was spent of it (None: no budget, everything fits).

    ``pace`` is the share of the day's allowance samples and debug events may have used by now
    (the day's elapsed fraction plus an hour): images made in the morning must not spend the
    bytes the afternoon's telemetry and detections need. They wait for the pace instead.
    """

    day_bytes: int | None
    used_today: int
    pace: float = 1.0

    def room(self, tier: int) -> int | None:
        if self.day_bytes is None or tier >= MUST:
            return None
        paced = self.pace if tier <= LABEL else 1.0
        return int(self.day_bytes * CEILING[tier] * paced) - self.used_today


def day_allowance(
    month_budget: int | None, day_cap: int | None, used_month_before_today: int, days_left: int
) -> int | None:
    """Unspent month spread over its remaining days (today included), capped by the daily budget.

    A day that sends less leaves more for the rest of the month; a day over its share (must-go
    messages) leaves less.
    """
    spread = None
    if month_budget is not None:
        spread = max(0, month_budget - used_month_before_today) // max(1, days_left)
    if day_cap is None:
        return spread
    return day_cap if spread is None else min(spread, day_cap)


def decide(tier: int, kind: str, size: int, age_s: float, allowance: Allowance, hold_s: float) -> Decision:
    """What the outbox does with one pending message in an open window."""
    room = allowance.room(tier)
    if room is None or size <= room:
        return Decision("send")
    if kind == "sample" and room >= MIN_SAMPLE_BYTES:
        return Decision("shrink", room)
    if tier == ROUTINE or age_s > hold_s:
        return Decision("drop")
    return Decision("hold")
