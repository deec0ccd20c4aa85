"""What the outbox asks before handing a message to the sender: is the link open, does it fit."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from .budget import Allowance, day_allowance
from .settings import UplinkSettings
from .windows import LinkSchedule, day_and_month

DAY_KEY = "uplink_bytes_day:"
MONTH_KEY = "uplink_bytes_month:"
# Samples may run this far ahead of the day's pace (an hour), so the first ones need not wait.
PACE_AHEAD = 1 / 24


class UplinkGate:
    def __init__(self, settings: UplinkSettings, schedule: LinkSchedule) -> None:
        self.settings = settings
        self.schedule = schedule
        self.tz = ZoneInfo(settings.timezone)

    @property
    def budgeted(self) -> bool:
        return self.settings.metered and (
            self.settings.budget_bytes_month is not None or self.settings.budget_bytes_day is not None
        )

    def keys(self, t: float) -> tuple[str, str, int]:
        """Counter names of the day and the month ``t`` falls in, and the month's days left (today included)."""
        day, month, left = day_and_month(t, self.tz)
        return DAY_KEY + day, MONTH_KEY + month, left

    def allowance(self, used_today: int, used_month: int, days_left: int, t: float) -> Allowance:
        if not self.budgeted:
            return Allowance(None, used_today)
        s = self.settings
        day = day_allowance(s.budget_bytes_month, s.budget_bytes_day, used_month - used_today, days_left)
        local = datetime.fromtimestamp(t, self.tz)
        elapsed = (local.hour * 3600 + local.minute * 60 + local.second) / 86400
        return Allowance(day, used_today, pace=min(1.0, elapsed + PACE_AHEAD))
