from __future__ import annotations

import typing

import pytest

from shared.quantities import QUANTITIES, Quantity, UnknownUnit, in_physical_range, to_canonical


@pytest.mark.parametrize(
    ("quantity", "value", "unit", "expected"),
    [
        ("air_temperature", 212.0, "degF", 100.0),
        ("soil_temperature", 273.15, "K", 0.0),
        ("soil_ec", 1500.0, "uS cm-1", 1.5),
        ("soil_moisture", 0.31, "m3 m-3", 31.0),
        ("pressure", 101.3, "kPa", 1013.0),
        ("wind_speed", 36.0, "km h-1", 10.0),
        ("rainfall", 1.0, "in", 25.4),
        ("nitrogen", 40.0, None, 40.0),
    ],
)
def test_readings_convert_to_the_canonical_unit(
    quantity: Quantity, value: float, unit: str | None, expected: float
) -> None:
    assert to_canonical(quantity, value, unit) == pytest.approx(expected)


def test_an_unknown_unit_names_the_accepted_ones() -> None:
    with pytest.raises(UnknownUnit, match=r"pressure: unit 'psi' is not known; use one of hPa.*canonical hPa"):
        to_canonical("pressure", 14.7, "psi")


def test_every_quantity_converts_its_canonical_unit_to_itself_and_has_a_sane_range() -> None:
    assert set(typing.get_args(Quantity)) == set(QUANTITIES)
    for quantity, spec in QUANTITIES.items():
        assert to_canonical(quantity, 1.0, spec.unit) == 1.0
        assert spec.low < spec.high
        assert in_physical_range(quantity, spec.low) and not in_physical_range(quantity, spec.high + 1)
