"""Who gets an alert, when quiet hours end, how long a retry waits: pure functions of their inputs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from ..db.notifications import SEVERITIES, SubscriptionSpec


@dataclass(frozen=True)
class AlertView:
    id: int
    rule: str
    severity: str
    farm_id: str
    field_id: str | None
    device_id: str | None
    message: str
    details: Any
    raised_at: datetime
    resolved_at: datetime | None
    acknowledged_at: datetime | None


def bumped(severity: str) -> str:
    """One level higher: an escalated warning reaches those who asked for critical only."""
    i = SEVERITIES.index(severity) if severity in SEVERITIES else 0
    return SEVERITIES[min(i + 1, len(SEVERITIES) - 1)]


def matches(spec: SubscriptionSpec, alert: AlertView, severity: str, farm_visible: bool) -> bool:
    if not (spec.enabled and farm_visible):
        return False
    if spec.farms and alert.farm_id not in spec.farms:
        return False
    if spec.fields and alert.field_id not in spec.fields:
        return False
    if spec.kinds and alert.rule not in spec.kinds:
        return False
    rank = SEVERITIES.index(severity) if severity in SEVERITIES else 0
    return rank >= SEVERITIES.index(spec.min_severity)


def quiet_until(spec: SubscriptionSpec, now: datetime, severity: str) -> datetime | None:
    """When the subscriber's quiet hours end (UTC), if ``now`` falls inside them; None: send now."""
    window = spec.quiet()
    if window is None or (severity == "critical" and spec.critical_overrides_quiet):
        return None
    start, end = window
    local = now.astimezone(ZoneInfo(spec.timezone))
    t = local.time().replace(tzinfo=None)
    inside = start <= t < end if start < end else (t >= start or t < end)  # a window past midnight wraps
    if not inside:
        return None
    end_local = local.replace(hour=end.hour, minute=end.minute, second=0, microsecond=0)
    if end_local <= local:
        end_local = (local + timedelta(days=1)).replace(hour=end.hour, minute=end.minute, second=0, microsecond=0)
    # replace() on an aware datetime keeps the old offset; re-localise across a DST change
    zone = ZoneInfo(spec.timezone)
    end_local = end_local.replace(tzinfo=None).replace(tzinfo=zone)
    return end_local.astimezone(UTC)


def backoff_s(attempts: int, base_s: float, max_s: float) -> float:
    """Wait after the ``attempts``-th failed try: base, 2 base, 4 base ... capped."""
    return float(min(max_s, base_s * 2 ** max(attempts - 1, 0)))
