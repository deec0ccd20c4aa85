"""Sensor health for bridged devices: one :class:`shared.sensor_health.SensorHealthTracker` per device.

An uplink is one interval of its device: its readings are judged (out of range, stuck), and a
channel the device sent before but left out of this uplink counts as missed. A device that sends
nothing cannot be judged by its uplinks, so :meth:`DeviceHealth.silent` (called on the bridge's
timer) counts each expected uplink interval (``interval_s``) that passed without one as a missed
interval of every channel; once ``missing_after`` are missed it yields a telemetry message with no
readings and the ``missing`` flags, once per further interval while the silence lasts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

from shared import SCHEMA_VERSION
from shared.ids import derived_msg_id, utcnow
from shared.messages import SensorHealth, SensorReading, Telemetry
from shared.sensor_health import Channel, HealthFlag, SensorHealthTracker
from shared.topics import device_topic

from .config import DeviceMap, LorawanConfig


def _contract(flags: list[HealthFlag]) -> list[SensorHealth]:
    return [SensorHealth(sensor=f.sensor, quantity=f.quantity, state=f.state, since=f.since) for f in flags[:64]]


class _Device:
    def __init__(
        self, dev: DeviceMap, interval_s: float, tracker: SensorHealthTracker, mapped: list[Channel], now: datetime
    ) -> None:
        self.dev = dev
        self.interval = timedelta(seconds=interval_s)
        self.tracker = tracker
        self.mapped = mapped
        self.heard: dict[Channel, None] = {}
        # Silence is counted from the bridge's start: a device that never speaks is missing too.
        self.last_heard = now
        self.missed = 0


class DeviceHealth:
    """Health flags for each mapped device; ``clock`` is injectable so tests need not wait intervals."""

    def __init__(
        self, config: LorawanConfig, mapped: dict[str, list[Channel]], clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.clock = clock
        b = config.bridge
        now = clock()
        self._devices = {
            d.dev_eui: _Device(
                d, config.interval_s(d), SensorHealthTracker(b.stuck_after, b.missing_after), mapped[d.dev_eui], now
            )
            for d in config.devices
        }  # fmt: skip
        self.missing_after = b.missing_after

    def on_uplink(self, dev_eui: str, readings: list[SensorReading], at: datetime) -> list[SensorHealth]:
        """Judge one uplink's readings; the flags to put in its telemetry."""
        d = self._devices[dev_eui]
        values: dict[Channel, float] = {(r.sensor, r.quantity): r.value for r in readings}
        flags = d.tracker.observe(list(d.heard), values, at)
        d.heard.update(dict.fromkeys(values))
        d.last_heard, d.missed = self.clock(), 0
        return _contract(flags)

    def silent(self) -> Iterator[tuple[str, Telemetry]]:
        """(topic, telemetry of missing flags) for each device silent for ``missing_after`` intervals or more."""
        if not self.missing_after:
            return
        now = self.clock()
        for eui, d in self._devices.items():
            due = math.floor((now - d.last_heard) / d.interval)
            if due <= d.missed:
                continue
            expected = list(d.heard) or d.mapped
            flags: list[HealthFlag] = []
            # After missing_after misses more observations change nothing; a clock jump is not a loop of days.
            first = max(d.missed + 1, due - self.missing_after + 1)
            for k in range(first, due + 1):
                flags = d.tracker.observe(expected, {}, d.last_heard + k * d.interval)
            d.missed = due
            if not any(f.state == "missing" for f in flags):
                continue
            dev = d.dev
            msg_id = derived_msg_id(
                math.floor(now.timestamp() * 1000), f"lorawan-missing:{eui}:{d.last_heard.isoformat()}:{due}".encode()
            )
            msg = Telemetry(
                schema_version=SCHEMA_VERSION, msg_id=msg_id, farm_id=dev.farm, device_id=dev.device,
                observed_at=now, field_id=dev.field, readings=[], sensor_health=_contract(flags),
            )  # fmt: skip
            yield device_topic(dev.farm, dev.device, "telemetry"), msg
