"""Telemetry folded per interval on a metered link: per channel min, mean, max, last and count.

One message per ``telemetry_interval_s`` (aligned to the interval, so hourly means on the hour)
instead of one per poll. A change in the sensor-health flags ends the interval early: a probe
going bad is news the farmer should not wait an hour for. The raw readings still go to the
outbox's sensor history (the yield model's input) at every poll.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from shared.messages import SensorHealth, Telemetry


@dataclass
class _Channel:
    unit: str
    first: float
    low: float
    high: float
    total: float = 0.0
    count: int = 0
    last: float = 0.0

    def add(self, value: float) -> None:
        self.low, self.high = min(self.low, value), max(self.high, value)
        self.total += value
        self.count += 1
        self.last = value


@dataclass
class _Interval:
    start: float
    channels: dict[tuple[str, str], _Channel] = field(default_factory=dict)
    health: list[SensorHealth] = field(default_factory=list)
    last_at: datetime | None = None


class TelemetryAggregator:
    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._cur: _Interval | None = None
        self._flags: set[tuple[str, str, str]] = set()
        self._template: Telemetry | None = None

    def _bucket(self, t: float) -> float:
        return t - t % self.interval_s

    def add(self, msg: Telemetry) -> list[Telemetry]:
        """Fold one raw message in; returns the aggregated messages now complete (zero or one, rarely two)."""
        t = msg.observed_at.timestamp()
        self._template = msg
        out: list[Telemetry] = []
        if self._cur is not None and self._bucket(t) != self._cur.start:
            out += self.flush(msg)
        flags = {(h.sensor, str(h.quantity), str(h.state)) for h in msg.sensor_health}
        changed = flags != self._flags
        self._flags = flags
        if self._cur is None:
            self._cur = _Interval(self._bucket(t))
        cur = self._cur
        for r in msg.readings:
            ch = cur.channels.get((r.sensor, r.quantity))
            if ch is None:
                ch = cur.channels[(r.sensor, r.quantity)] = _Channel(r.unit, r.value, r.value, r.value)
            ch.add(r.value)
        cur.health = list(msg.sensor_health)
        cur.last_at = msg.observed_at
        if changed:
            out += self.flush(msg)
        return out

    def flush(self, template: Telemetry | None = None) -> list[Telemetry]:
        """The current interval as one message (none when empty); the next reading starts a new one."""
        cur, self._cur = self._cur, None
        template = template or self._template
        if template is None or cur is None or cur.last_at is None or (not cur.channels and not cur.health):
            return []
        readings = [
            {
                "sensor": sensor, "quantity": quantity, "value": ch.last, "unit": ch.unit,
                "min": ch.low, "max": ch.high, "count": ch.count,
                # Clamped: a float sum can land a hair outside [min, max] for a constant channel.
                "mean": min(ch.high, max(ch.low, ch.total / ch.count)),
            }
            for (sensor, quantity), ch in sorted(cur.channels.items())
        ]  # fmt: skip
        span = max(0.0, cur.last_at.timestamp() - cur.start)
        doc = {
            "farm_id": template.farm_id,
            "device_id": template.device_id,
            "field_id": template.field_id,
            "observed_at": cur.last_at.astimezone(UTC),
            "readings": readings,
            "sensor_health": cur.health,
            "interval_s": round(min(self.interval_s, max(span, 1.0)), 3),
        }
        return [Telemetry.model_validate(doc)]
