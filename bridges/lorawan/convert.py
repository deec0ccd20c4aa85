"""One uplink to one Cropwatch ``telemetry`` message, with the bridge's counters.

Nothing here raises on bad input: every uplink ends as a publish or as a counted, logged (rate
limited) reason. The telemetry's msg_id is derived from (DevEUI, frame counter, uplink time), so the
same uplink always gives the same id: ingest's idempotence on msg_id stores a replay once even
across bridge restarts, and an exact repeat still in the bridge's memory is not published at all.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from shared import SCHEMA_VERSION
from shared.ids import derived_msg_id, utcnow
from shared.messages import RadioLink, SensorReading, Telemetry
from shared.quantities import QUANTITIES, in_physical_range, to_canonical
from shared.sensor_health import Channel
from shared.topics import device_topic

from .config import DeviceMap, FieldMap, LorawanConfig
from .health import DeviceHealth
from .uplink import Uplink, UplinkError, parse_uplink

logger = logging.getLogger(__name__)

MAX_READINGS = 64  # Telemetry.readings' limit


class RateLimitedLog:
    """A warning per (problem, subject) at most once per interval, with how many were not logged."""

    def __init__(self, every_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self.clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._quiet: Counter[tuple[str, str]] = Counter()

    def warning(self, problem: str, subject: str, text: str, *args: object) -> None:
        key = (problem, subject)
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            self._quiet[key] += 1
            return
        self._last[key] = now
        quiet = self._quiet.pop(key, 0)
        suffix = f" ({quiet} more like this since the last line)" if quiet else ""
        logger.warning("%s%s", text % args, suffix)


def _sensor_id(field: str) -> str:
    sensor = re.sub(r"[^a-z0-9_-]+", "_", field.lower()).strip("_-") or "field"
    return sensor[:64]


class Converter:
    def __init__(
        self, config: LorawanConfig, clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = utcnow,
    ) -> None:  # fmt: skip
        self.config = config
        self.format = config.network_server.format
        self.devices: dict[str, DeviceMap] = {d.dev_eui: d for d in config.devices}
        self._fields = {d.dev_eui: config.field_map(d) for d in config.devices}
        self._ignored = {d.dev_eui: config.ignored(d) for d in config.devices}
        self.counters: Counter[str] = Counter()
        self.unknown_fields: Counter[str] = Counter()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._memory = config.bridge.dedup_memory
        self.log = RateLimitedLog(config.bridge.problem_log_every_s, clock)
        mapped: dict[str, list[Channel]] = {
            eui: list(dict.fromkeys((spec.sensor or _sensor_id(name), spec.quantity) for name, spec in fields.items()))
            for eui, fields in self._fields.items()
        }
        # Out of range, stuck and missing, judged as the edge agent judges its own sensors.
        self.health = DeviceHealth(config, mapped, wall)

    def convert(self, payload: bytes) -> tuple[str, Telemetry] | None:
        """(topic, telemetry) to publish, or None with the reason counted and logged."""
        self.counters["uplinks"] += 1
        try:
            uplink = parse_uplink(payload, self.format)
        except UplinkError as exc:
            self.counters[exc.reason] += 1
            self.log.warning(exc.reason, "", "uplink dropped (%s): %s", exc.reason, exc.detail[:200])
            return None
        dev = self.devices.get(uplink.dev_eui)
        if dev is None:
            self.counters["unknown_device"] += 1
            self.log.warning("unknown_device", uplink.dev_eui, "uplink from unmapped DevEUI %s dropped", uplink.dev_eui)
            return None
        if uplink.decoded is None:
            self.counters["no_decoded_object"] += 1
            self.log.warning(
                "no_decoded_object", uplink.dev_eui,
                "uplink from %s (%s/%s) has no decoded object: give the device a codec (ChirpStack) "
                "or payload formatter (TTS) on the network server",
                uplink.dev_eui, dev.farm, dev.device,
            )  # fmt: skip
            return None
        msg_id = self.msg_id(uplink)
        if msg_id in self._seen:
            self.counters["duplicates"] += 1
            self._seen.move_to_end(msg_id)
            return None
        readings = self._readings(dev, uplink.decoded)
        if not readings:
            self.counters["no_known_fields"] += 1
            return None
        health = self.health.on_uplink(dev.dev_eui, readings, uplink.time)
        try:
            msg = Telemetry(
                schema_version=SCHEMA_VERSION, msg_id=msg_id, farm_id=dev.farm, device_id=dev.device,
                observed_at=uplink.time, field_id=dev.field, readings=readings, sensor_health=health,
                link=self._link(uplink),
            )  # fmt: skip
        except ValidationError as exc:
            self.counters["invalid_telemetry"] += 1
            self.log.warning("invalid_telemetry", uplink.dev_eui, "telemetry for %s not valid: %s", dev.device, exc)
            return None
        self._remember(msg_id)
        self.counters["converted"] += 1
        self.counters["readings"] += len(readings)
        return device_topic(dev.farm, dev.device, "telemetry"), msg

    def silent(self) -> list[tuple[str, Telemetry]]:
        """Telemetry of ``missing`` flags for devices silent too long (the bridge's timer calls this)."""
        out = list(self.health.silent())
        self.counters["missing_messages"] += len(out)
        return out

    @staticmethod
    def msg_id(uplink: Uplink) -> str:
        time_ms = math.floor(uplink.time.timestamp() * 1000)
        return derived_msg_id(time_ms, f"lorawan:{uplink.dev_eui}:{uplink.f_cnt}:{uplink.time.isoformat()}".encode())

    def _remember(self, msg_id: str) -> None:
        if self._memory <= 0:
            return
        self._seen[msg_id] = None
        while len(self._seen) > self._memory:
            self._seen.popitem(last=False)

    def _readings(self, dev: DeviceMap, decoded: dict[str, Any]) -> list[SensorReading]:
        fields, ignored = self._fields[dev.dev_eui], self._ignored[dev.dev_eui]
        readings: list[SensorReading] = []
        for name, raw in decoded.items():
            spec = fields.get(name)
            if spec is None:
                if name not in ignored:
                    self.counters["unknown_field"] += 1
                    self.unknown_fields[f"{dev.dev_eui}:{name}"] += 1
                    self.log.warning(
                        "unknown_field", f"{dev.dev_eui}:{name}",
                        "decoded field %r of %s (%s) is not in its field map; map it or list it in ignore",
                        name, dev.dev_eui, dev.device,
                    )  # fmt: skip
                continue
            reading = self._reading(dev, name, raw, spec)
            if reading is None:
                continue
            if len(readings) == MAX_READINGS:
                self.counters["too_many_fields"] += 1
                continue
            readings.append(reading)
        return readings

    def _reading(self, dev: DeviceMap, name: str, raw: Any, spec: FieldMap) -> SensorReading | None:
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
            self.counters["bad_value"] += 1
            where = f"{dev.dev_eui}:{name}"
            self.log.warning("bad_value", where, "field %r of %s is %r, not a number", name, dev.device, raw)
            return None
        value = to_canonical(spec.quantity, float(raw) * spec.scale, spec.unit)
        sensor = spec.sensor or _sensor_id(name)
        if not in_physical_range(spec.quantity, value):
            self.counters["out_of_range"] += 1
            self.log.warning(
                "out_of_range", f"{dev.dev_eui}:{name}", "%s of %s is %s %s, outside its physical range",
                spec.quantity, dev.device, value, QUANTITIES[spec.quantity].unit,
            )  # fmt: skip
        return SensorReading(sensor=sensor, quantity=spec.quantity, value=value, unit=QUANTITIES[spec.quantity].unit)

    @staticmethod
    def _link(uplink: Uplink) -> RadioLink:
        best = uplink.best_gateway()
        rssi = best.rssi if best and best.rssi is not None and -200 <= best.rssi <= 50 else None
        snr = best.snr if best and best.snr is not None and -50 <= best.snr <= 50 else None
        # A gateway reporting nonsense link values loses those values, never the readings.
        return RadioLink(
            rssi_dbm=rssi,
            snr_db=snr,
            frame_counter=uplink.f_cnt,
            gateway_id=best.gateway_id[:64] if best and best.gateway_id else None,
            gateways=len(uplink.gateways),
        )
