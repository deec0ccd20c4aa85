"""Uplink windows: a daily schedule in local time, or a power reading above a threshold.

A schedule is ``"HH:MM-HH:MM"`` windows separated by commas; a window whose end is before its
start runs past midnight (``"23:50-00:10"``). Times are the device's local wall clock in
``[uplink] timezone``; a window skipped or doubled by a DST change is skipped or doubled.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


@dataclass(frozen=True)
class Window:
    start_min: int
    end_min: int

    def contains(self, minute_of_day: float) -> bool:
        if self.start_min <= self.end_min:
            return self.start_min <= minute_of_day < self.end_min
        return minute_of_day >= self.start_min or minute_of_day < self.end_min


def parse_schedule(text: str) -> list[Window]:
    windows = []
    for part in text.split(","):
        m = _WINDOW.match(part)
        if m is None:
            raise ValueError(f'uplink window {part.strip()!r} is not HH:MM-HH:MM (e.g. "06:00-06:15,18:00-18:15")')
        h1, m1, h2, m2 = (int(g) for g in m.groups())
        if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or (h2 == 24 and m2):
            raise ValueError(f"uplink window {part.strip()!r} names a time that is not on a clock")
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if start == end % 1440:
            raise ValueError(f"uplink window {part.strip()!r} is empty (start equals end)")
        windows.append(Window(start, end % 1440 if end != 1440 else 1440))
    if not windows:
        raise ValueError("uplink windows: at least one window is needed")
    return windows


class LinkSchedule:
    """Whether the link may be used at a given time, and when it may be used next.

    ``power`` returns the latest reading of the power quantity (None when none is recent);
    the link is also open while it is at least ``power_above``.
    """

    def __init__(
        self,
        windows: str | None,
        tz: str = "UTC",
        power_above: float | None = None,
        power: Callable[[], float | None] = lambda: None,
    ) -> None:
        self.windows = parse_schedule(windows) if windows else []
        self.tz = ZoneInfo(tz)
        self.power_above = power_above
        self.power = power

    @property
    def always_open(self) -> bool:
        return not self.windows and self.power_above is None

    def _minute(self, t: float) -> float:
        local = datetime.fromtimestamp(t, self.tz)
        return local.hour * 60 + local.minute + local.second / 60

    def in_window(self, t: float) -> bool:
        if not self.windows:
            return False
        minute = self._minute(t)
        return any(w.contains(minute) for w in self.windows)

    def powered(self) -> bool:
        if self.power_above is None:
            return False
        value = self.power()
        return value is not None and value >= self.power_above

    def is_open(self, t: float) -> bool:
        return self.always_open or self.in_window(t) or self.powered()

    def next_open(self, t: float) -> float | None:
        """Start of the next scheduled window after the one ``t`` is in (or after ``t``); None without a schedule.

        Walks minute boundaries in local time over two days: cheap (a few thousand steps, once per status).
        """
        if not self.windows:
            return None
        step = 60.0
        start = (int(t // step) + 1) * step
        was_open = self.in_window(t)
        for i in range(2 * 1440 + 1):
            at = start + i * step
            now_open = self.in_window(at)
            if now_open and not was_open:
                return at
            was_open = now_open
        return None


def day_and_month(t: float, tz: ZoneInfo) -> tuple[str, str, int]:
    """The budget's day key, month key and how many days are left in the month (today included)."""
    local = datetime.fromtimestamp(t, tz)
    first_next = (local.replace(day=28) + timedelta(days=4)).replace(day=1)
    return local.strftime("%Y-%m-%d"), local.strftime("%Y-%m"), (first_next.date() - local.date()).days
