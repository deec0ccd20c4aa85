"""The sensor quantities of the contract: canonical unit, accepted units, physical range.

``Quantity`` is what a ``telemetry`` reading's ``quantity`` may be (shared.messages) and what an
agent's sensor channel, a Modbus register map or a LoRaWAN field map may report. Readings are
stored in the canonical unit; :func:`to_canonical` converts from any unit listed for the
quantity, so a probe that reports degF or a network server that sends mS/cm needs no code.
The physical range is what a working sensor can report at all: a value outside it is a broken or
miswired sensor (sensor health), not weather. A new quantity is one line in ``Quantity`` and one
entry in ``QUANTITIES``.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
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
    "soil_ec",
    "soil_ph",
    "nitrogen",
    "phosphorus",
    "potassium",
    "soil_water_tension",
    "water_level",
    "co2",
    "pressure",
    "wind_direction",
    "leaf_temperature",
    "par",
]


@dataclass(frozen=True)
class QuantitySpec:
    unit: str
    """The canonical unit: what the database stores and the monitor shows."""
    low: float
    high: float
    """The physical range a working sensor reports, in the canonical unit (both ends allowed)."""
    units: dict[str, tuple[float, float]]
    """Accepted units: canonical = value * scale + offset."""


def _same(unit: str, *aliases: str) -> dict[str, tuple[float, float]]:
    return {u: (1.0, 0.0) for u in (unit, *aliases)}


_TEMPERATURE = {
    **_same("degC", "°C", "C"),
    "degF": (5 / 9, -32 * 5 / 9),
    "°F": (5 / 9, -32 * 5 / 9),
    "K": (1.0, -273.15),
}
_PER_KG = {**_same("mg kg-1", "mg/kg", "ppm")}

QUANTITIES: dict[Quantity, QuantitySpec] = {
    "soil_moisture": QuantitySpec(
        "%", 0, 100, {**_same("%", "percent"), "m3 m-3": (100.0, 0.0), "m3/m3": (100.0, 0.0)}
    ),
    "soil_temperature": QuantitySpec("degC", -40, 80, _TEMPERATURE),
    "air_temperature": QuantitySpec("degC", -60, 60, _TEMPERATURE),
    "relative_humidity": QuantitySpec("%", 0, 100, _same("%", "percent", "%RH")),
    "leaf_wetness": QuantitySpec("%", 0, 100, _same("%", "percent")),
    "rainfall": QuantitySpec("mm", 0, 500, {**_same("mm"), "in": (25.4, 0.0)}),
    "solar_radiation": QuantitySpec("W m-2", 0, 1500, _same("W m-2", "W/m2")),
    "wind_speed": QuantitySpec(
        "m s-1",
        0,
        75,
        {**_same("m s-1", "m/s"), "km h-1": (1 / 3.6, 0.0), "km/h": (1 / 3.6, 0.0), "mph": (0.44704, 0.0)},
    ),
    "battery_voltage": QuantitySpec("V", 0, 60, {**_same("V"), "mV": (0.001, 0.0)}),
    "soil_ec": QuantitySpec(
        "dS m-1", 0, 20, {**_same("dS m-1", "dS/m", "mS cm-1", "mS/cm"), "uS cm-1": (0.001, 0.0), "us/cm": (0.001, 0.0)}
    ),
    "soil_ph": QuantitySpec("pH", 0, 14, _same("pH")),
    "nitrogen": QuantitySpec("mg kg-1", 0, 2000, _PER_KG),
    "phosphorus": QuantitySpec("mg kg-1", 0, 2000, _PER_KG),
    "potassium": QuantitySpec("mg kg-1", 0, 2000, _PER_KG),
    "soil_water_tension": QuantitySpec("kPa", 0, 1500, {**_same("kPa", "cbar"), "bar": (100.0, 0.0)}),
    "water_level": QuantitySpec("m", -100, 100, {**_same("m"), "cm": (0.01, 0.0), "mm": (0.001, 0.0)}),
    "co2": QuantitySpec("ppm", 0, 10000, _same("ppm")),
    "pressure": QuantitySpec("hPa", 300, 1100, {**_same("hPa", "mbar"), "kPa": (10.0, 0.0), "Pa": (0.01, 0.0)}),
    "wind_direction": QuantitySpec("deg", 0, 360, _same("deg", "°")),
    "leaf_temperature": QuantitySpec("degC", -40, 80, _TEMPERATURE),
    "par": QuantitySpec("umol m-2 s-1", 0, 2500, _same("umol m-2 s-1", "µmol m-2 s-1", "umol/m2/s")),
}

CANONICAL_UNITS: dict[Quantity, str] = {q: spec.unit for q, spec in QUANTITIES.items()}

# The type checker holds the keys to the Literal; this holds the Literal to the keys.
if set(typing.get_args(Quantity)) != set(QUANTITIES):
    raise RuntimeError("every sensor quantity needs exactly one QuantitySpec (shared/quantities.py)")


class UnknownUnit(ValueError):
    """A unit the quantity does not list; the message names the accepted ones."""


def to_canonical(quantity: Quantity, value: float, unit: str | None = None) -> float:
    """``value`` in ``unit`` (default: canonical) converted to the quantity's canonical unit."""
    spec = QUANTITIES[quantity]
    scale, offset = spec.units.get(unit or spec.unit, (None, None))
    if scale is None or offset is None:
        raise UnknownUnit(
            f"{quantity}: unit {unit!r} is not known; use one of {', '.join(spec.units)} (canonical {spec.unit})"
        )
    return value * scale + offset


def in_physical_range(quantity: Quantity, canonical_value: float) -> bool:
    spec = QUANTITIES[quantity]
    return spec.low <= canonical_value <= spec.high
