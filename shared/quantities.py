"""The sensor quantities of the contract, each with its canonical unit.

``Quantity`` is what a ``telemetry`` reading's ``quantity`` may be (shared.messages) and what an
agent's sensor channel may report (edge_agent); a reading states its own ``unit``, and a channel
that names none reports the canonical one. A new quantity is one line in each of the two below.
"""

from __future__ import annotations

import typing
from typing import Literal

Quantity = Literal[
    "soil_moisture",
    "soil_temperature",
    "air_temperature",
    "relative_humidity",
    "leaf_wetness",
    "rainfall",
    "solar_radiation",
    "wind_speed",
    "battery_voltage",
]

CANONICAL_UNITS: dict[Quantity, str] = {
    "soil_moisture": "%",
    "soil_temperature": "degC",
    "air_temperature": "degC",
    "relative_humidity": "%",
    "leaf_wetness": "%",
    "rainfall": "mm",
    "solar_radiation": "W m-2",
    "wind_speed": "m s-1",
    "battery_voltage": "V",
}

# The type checker holds the keys to the Literal; this holds the Literal to the keys.
if set(typing.get_args(Quantity)) != set(CANONICAL_UNITS):
    raise RuntimeError("every sensor quantity needs exactly one canonical unit (shared/quantities.py)")
