"""Sensors (soil moisture, air temperature, humidity, leaf wetness, ...) behind a reader interface.

A :class:`SensorReader` returns ``{quantity: value}``. The serial reader speaks the simplest
protocol a microcontroller can: one line per sample, ``quantity=value`` pairs separated by spaces
or commas (``soil_moisture=31.2 air_temperature=18.4``). The simulated reader draws plausible
diurnal curves for demos and tests.
"""

from __future__ import annotations

import logging
import math
import random
import time
from typing import Protocol

from . import Reading, ReadingsItem, SourceContext, ThreadedSource

logger = logging.getLogger(__name__)


class SensorReader(Protocol):
    def read(self) -> dict[str, float]: ...

    def close(self) -> None: ...


def parse_line(line: str) -> dict[str, float]:
    """``a=1.5, b=2`` -> {"a": 1.5, "b": 2.0}; pairs that do not parse are skipped."""
    out: dict[str, float] = {}
    for part in line.replace(",", " ").split():
        key, sep, value = part.partition("=")
        if not sep:
            continue
        try:
            number = float(value)
        except ValueError:
            continue
        if math.isfinite(number):
            out[key.strip()] = number
    return out


class SerialReader:
    """Reads one line from a serial port (pyserial when installed, else the tty as a file)."""

    def __init__(self, port: str, baudrate: int = 9600, timeout_s: float = 2.0) -> None:
        self.port, self.baudrate, self.timeout_s = port, baudrate, timeout_s
        self._dev = None

    def _open(self):  # type: ignore[no-untyped-def]
        try:
            import serial  # type: ignore[import-not-found]

            return serial.Serial(self.port, self.baudrate, timeout=self.timeout_s)
        except ModuleNotFoundError:
            return open(self.port, "rb", buffering=0)

    def read(self) -> dict[str, float]:
        if self._dev is None:
            self._dev = self._open()
        raw = self._dev.readline()
        return parse_line(raw.decode("ascii", errors="replace"))

    def close(self) -> None:
        if self._dev is not None:
            self._dev.close()
            self._dev = None


class SimulatedReader:
    """Diurnal air temperature and humidity, slowly drying soil with rain events, dew on leaves."""

    def __init__(self, seed: int = 0, clock=time.time) -> None:  # type: ignore[no-untyped-def]
        self._rng = random.Random(seed)
        self._clock = clock
        self._soil = 32.0

    def read(self) -> dict[str, float]:
        hour = (self._clock() / 3600.0) % 24
        day_phase = math.sin((hour - 9) / 24 * 2 * math.pi)
        temp = 18 + 7 * day_phase + self._rng.gauss(0, 0.5)
        rh = min(100.0, max(20.0, 70 - 20 * day_phase + self._rng.gauss(0, 2)))
        rain = 0.0
        if self._rng.random() < 0.03:
            rain = self._rng.uniform(1, 15)
        self._soil = min(60.0, max(5.0, self._soil - 0.05 + rain * 0.8))
        wet = 100.0 if rh > 90 or rain > 0 else max(0.0, (rh - 60) * 2)
        return {
            "air_temperature": round(temp, 2),
            "relative_humidity": round(rh, 1),
            "soil_moisture": round(self._soil, 2),
            "leaf_wetness": round(wet, 1),
            "rainfall": round(rain, 2),
            "soil_temperature": round(temp - 3, 2),
            "battery_voltage": 12.6,
        }

    def close(self) -> None:
        pass


def build_reader(settings) -> SensorReader:  # type: ignore[no-untyped-def]
    if settings.kind == "serial":
        return SerialReader(settings.port, settings.baudrate, settings.timeout_s)
    return SimulatedReader(settings.seed)


class SensorPoller(ThreadedSource):
    def __init__(self, settings, ctx: SourceContext, reader: SensorReader | None = None) -> None:  # type: ignore[no-untyped-def]
        super().__init__(settings.name, ctx)
        self.settings = settings
        self.interval_s = settings.interval_s
        self.reader = reader or build_reader(settings.reader)

    def tick(self, requested: bool) -> None:
        try:
            values = self.reader.read()
        except (OSError, ValueError) as exc:
            logger.warning("sensor reader of %s failed: %s", self.name, exc)
            self.ctx.count_error("sensor_read")
            self.reader.close()
            return
        readings = [
            Reading(sensor=c.sensor, quantity=c.quantity, value=values[c.quantity], unit=c.unit)
            for c in self.settings.channels
            if c.quantity in values
        ]
        if readings:
            self.ctx.submit(ReadingsItem(source=self.name, readings=readings))
        else:
            self.ctx.count_error("sensor_no_values")

    def teardown(self) -> None:
        self.reader.close()
