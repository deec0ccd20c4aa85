"""Which detected images go to labelling as samples, and the caps on how many (docs/edge-agent.md)."""

from __future__ import annotations

from collections.abc import Callable

from shared.ids import wall_time
from shared.messages import DetectionStatus, SampleReason

from .config import SampleSettings
from .outbox import Outbox


class SamplePolicy:
    """Images go to labelling, at most ``max_per_hour`` and ``max_per_day`` (requested ones always).

    A detection where the shadow model's top label differs from the champion's is sent as
    ``shadow_disagreement`` (the images that decide a champion-versus-challenger comparison), a
    low-confidence one as ``low_confidence``; both count against the same limits.
    """

    def __init__(self, settings: SampleSettings, outbox: Outbox, clock: Callable[[], float] = wall_time) -> None:
        self.settings = settings
        self.outbox = outbox
        self.clock = clock
        self.capped = 0

    def reason(
        self,
        confidence: float,
        requested: bool,
        in_batch: int,
        disagree: bool = False,
        status: DetectionStatus = "ok",
    ) -> SampleReason | None:
        if requested:
            return "requested"
        s = self.settings
        if not s.enabled or status == "not_a_leaf":
            return None
        uncertain = status == "uncertain"
        if confidence >= s.confidence_below and not disagree and not uncertain:
            return None
        now = self.clock()
        hour = self.outbox.samples_since(now - 3600) + in_batch
        day = self.outbox.samples_since(now - 86400) + in_batch
        # The last `uncertain_reserve` of each cap is kept for images the model abstained on: they
        # are the labels that teach it what it does not know, so they go ahead of every other sample.
        reserve = 0.0 if uncertain else s.uncertain_reserve
        if hour >= s.max_per_hour * (1 - reserve) or day >= s.max_per_day * (1 - reserve):
            self.capped += 1
            return None
        if uncertain:
            return "uncertain"
        return "shadow_disagreement" if disagree else "low_confidence"
