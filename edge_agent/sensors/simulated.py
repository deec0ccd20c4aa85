"""Simulated sensors for demos and tests: diurnal curves, rain events, dew on leaves."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from typing import Literal

from . import READERS, ReaderSettings


class SimulatedReaderSettings(ReaderSettings):
    type: Literal["simulated"] = "simulated"
    seed: int = 0


class SimulatedReader:
    """Diurnal air temperature and humidity, slowly drying soil with rain events, dew on leaves."""

    def __init__(self, settings: SimulatedReaderSettings, clock: Callable[[], float] = time.time) -> None:
        self._rng = random.Random(settings.seed)
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


READERS.register(SimulatedReaderSettings, SimulatedReader)
