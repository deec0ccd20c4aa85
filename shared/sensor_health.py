"""Sensor health: which channels of a device report a value out of range, a stuck value, or nothing.

Pure logic (standard library and the quantity vocabulary only), so the edge agent's sensor source
and the LoRaWAN bridge judge health the same way. A caller keeps one :class:`SensorHealthTracker`
per device (or per polled source), calls :meth:`SensorHealthTracker.observe` once per interval
with the channels it expects and the values it got, and puts the returned flags in the telemetry
message (``Telemetry.sensor_health``). A flag is repeated in every message while it holds; ingest
resolves the alert when a message carries the channel's reading without the flag.

- ``out_of_range``: the value (in the canonical unit) is outside the quantity's physical range
  (:data:`shared.quantities.QUANTITIES`): a broken or miswired sensor, not weather. The reading is
  still sent and stored; the flag says not to trust it.
- ``stuck``: ``stuck_after`` identical readings in a row. A value at either end of the physical
  range never counts: a dry rain gauge reads 0 for weeks, a wet leaf 100 % all night, a pyranometer
  0 all night.
- ``missing``: no value for ``missing_after`` intervals in a row (the reader failed or the
  quantity was absent from its answer).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, cast

from .quantities import QUANTITIES, Quantity, in_physical_range

HealthState = Literal["out_of_range", "stuck", "missing"]
HEALTH_STATES: tuple[HealthState, ...] = ("out_of_range", "stuck", "missing")

Channel = tuple[str, str]
"""(sensor id, quantity)"""


@dataclass(frozen=True)
class HealthFlag:
    sensor: str
    quantity: str
    state: HealthState
    since: datetime
    """When the state began: the first out-of-range reading, the identical run's first, the first missed poll."""


@dataclass
class _ChannelState:
    last: float | None = None
    run: int = 0
    run_since: datetime | None = None
    missed: int = 0
    missing_since: datetime | None = None
    out_since: datetime | None = None
    flags: dict[HealthState, datetime] = field(default_factory=dict)


class SensorHealthTracker:
    """Health of a set of channels across intervals; ``stuck_after`` or ``missing_after`` 0 turns that check off."""

    def __init__(self, stuck_after: int = 10, missing_after: int = 3) -> None:
        if stuck_after < 0 or missing_after < 0:
            raise ValueError("stuck_after and missing_after must be 0 (off) or more")
        self.stuck_after = stuck_after
        self.missing_after = missing_after
        self._channels: dict[Channel, _ChannelState] = {}

    def observe(self, expected: Iterable[Channel], values: Mapping[Channel, float], now: datetime) -> list[HealthFlag]:
        """Record one interval; returns the flags that hold now, in the order of ``expected``.

        ``values`` are in the quantity's canonical unit. A channel in ``values`` but not in
        ``expected`` is judged too (a bridge may not know a device's channels in advance).
        """
        flags: list[HealthFlag] = []
        order = list(dict.fromkeys([*expected, *values]))
        for channel in order:
            st = self._channels.setdefault(channel, _ChannelState())
            value = values.get(channel)
            if value is None:
                self._missed(st, now)
            else:
                self._seen(st, channel[1], value, now)
            sensor, quantity = channel
            flags.extend(HealthFlag(sensor, quantity, state, since) for state, since in st.flags.items())
        return flags

    def forget(self, channel: Channel) -> None:
        """Stop tracking a channel (removed from the config or the device map)."""
        self._channels.pop(channel, None)

    def _missed(self, st: _ChannelState, now: datetime) -> None:
        st.missed += 1
        if st.missing_since is None:
            st.missing_since = now
        if self.missing_after and st.missed >= self.missing_after:
            st.flags["missing"] = st.missing_since
        # A stale value neither proves nor disproves the other states: they stay as they were.

    def _seen(self, st: _ChannelState, quantity: str, value: float, now: datetime) -> None:
        st.missed = 0
        st.missing_since = None
        st.flags.pop("missing", None)
        known = quantity in QUANTITIES
        q = cast(Quantity, quantity)
        if known and not in_physical_range(q, value):
            if st.out_since is None:
                st.out_since = now
            st.flags["out_of_range"] = st.out_since
        else:
            st.out_since = None
            st.flags.pop("out_of_range", None)
        if value == st.last:
            st.run += 1
        else:
            st.last, st.run, st.run_since = value, 1, now
        at_bound = known and value in (QUANTITIES[q].low, QUANTITIES[q].high)
        if self.stuck_after and st.run >= self.stuck_after and not at_bound and st.run_since is not None:
            st.flags["stuck"] = st.run_since
        else:
            st.flags.pop("stuck", None)
