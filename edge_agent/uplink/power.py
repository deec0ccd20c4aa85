"""Camera and inference duty cycle from the battery: image sources capture less as it runs down.

Above ``[power] low`` every capture interval is kept; between ``critical`` and ``low`` one in
``1 / low_duty``; below ``critical`` none until the reading recovers. Without a recent reading
(no sensor for the quantity, or older than ``max_age_s``) the duty cycle is full: a device whose
battery sensor failed keeps doing its job. Sensor sources are never slowed: they are how the
battery is known.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .settings import PowerSettings

Latest = Callable[[str, float], float | None]


class PowerGovernor:
    def __init__(self, settings: PowerSettings, latest: Latest, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.latest = latest
        self.clock = clock
        self._skipped: dict[str, int] = {}

    def duty(self) -> float:
        s = self.settings
        if s.low is None and s.critical is None:
            return 1.0
        value = self.latest(s.quantity, self.clock() - s.max_age_s)
        if value is None:
            return 1.0
        if s.critical is not None and value < s.critical:
            return 0.0
        if s.low is not None and value < s.low:
            return s.low_duty
        return 1.0

    def allow(self, source: str) -> bool:
        """Whether an image source's scheduled capture runs now (a requested capture always does)."""
        duty = self.duty()
        if duty >= 1.0:
            self._skipped.pop(source, None)
            return True
        if duty <= 0.0:
            return False
        every = max(1, round(1 / duty))
        n = self._skipped.get(source, 0) + 1
        if n >= every:
            self._skipped[source] = 0
            return True
        self._skipped[source] = n
        return False
