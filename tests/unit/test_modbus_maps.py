"""Register maps, decoding and reader settings of the Modbus readers (no bus: see the integration tests)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from cropwatch.demo.modbus_probe import words
from edge_agent.plugins import resolve_paths
from edge_agent.sensors import READERS
from edge_agent.sensors.modbus_bus import RegisterSpec, decode, load_register_map, plan_blocks, shipped_maps
from edge_agent.sources.sensors import SensorChannel, SensorSourceSettings


def spec(**kw: object) -> RegisterSpec:
    return RegisterSpec.model_validate({"name": "x", "address": 0, "unit": "degC", "quantity": "air_temperature", **kw})


@pytest.mark.parametrize(
    ("data_type", "word_order", "raw", "value"),
    [
        ("int16", "big", [0xFF9B], -101.0),  # two's complement: the soil probe's -10.1 degC before scaling
        ("uint16", "big", [0xFF9B], 65435.0),
        ("int32", "big", [0xFFFF, 0xFFFE], -2.0),
        ("int32", "little", [0xFFFE, 0xFFFF], -2.0),
        ("uint32", "big", [0x0001, 0x0002], 65538.0),
        ("uint32", "little", [0x0002, 0x0001], 65538.0),
        ("float32", "big", [0x41C8, 0x0000], 25.0),  # IEEE 754 ABCD
        ("float32", "little", [0x0000, 0x41C8], 25.0),  # CDAB
    ],
)
def test_decode_known_register_values(data_type: str, word_order: str, raw: list[int], value: float) -> None:
    s = spec(data_type=data_type, word_order=word_order)
    assert decode(raw, s) == value
    assert words(value, data_type, word_order) == raw  # the test probe encodes what the reader decodes


def test_scale_and_offset_then_canonical_unit() -> None:
    assert decode([0x0144], spec(scale=0.1)) == pytest.approx(32.4)  # 0x0144 -> 32.4 degC (datasheet example)
    assert decode([500], spec(scale=0.1, offset=-40)) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="2 registers for a uint16"):
        decode([1, 2], spec())


def test_shipped_maps_load_and_name_their_sources() -> None:
    assert shipped_maps() == ["soil_mte_3in1", "soil_npk", "weather_metsens300"]
    for name in shipped_maps():
        regmap = load_register_map(name)
        assert regmap.sources and regmap.registers
        text = (Path(__file__).parents[2] / "edge_agent" / "sensors" / "maps" / f"{name}.toml").read_text()
        assert "Datasheet facts" in text and "come from" in text


def test_blocks_read_adjacent_registers_together_and_never_a_gap() -> None:
    blocks = plan_blocks(load_register_map("weather_metsens300").registers)
    assert [(b.register, b.address, b.count) for b in blocks] == [("holding", 0, 6), ("holding", 8, 2)]
    specs = [spec(address=5, register_type="input"), spec(address=4, register_type="input"), spec(address=0)]
    assert [(b.register, b.address, b.count) for b in plan_blocks(specs)] == [("holding", 0, 1), ("input", 4, 2)]


def test_bad_maps_and_settings_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unit 'furlongs' is not known"):
        spec(unit="furlongs")
    bad = tmp_path / "probe.toml"
    bad.write_text(
        'model = "x"\nsources = ["me"]\n[[registers]]\n'
        'name = "a"\naddress = 70000\nunit = "%"\nquantity = "soil_moisture"\n'
    )
    with pytest.raises(ValueError, match=r"(?s)probe\.toml.*registers\.0\.address"):
        load_register_map(path=bad)
    with pytest.raises(ValidationError, match="not shipped; use one of soil_mte_3in1"):
        READERS.parse({"type": "modbus_tcp", "host": "h", "map": "nope"})
    with pytest.raises(ValidationError, match="exactly one of map"):
        READERS.parse({"type": "modbus_rtu", "port": "/dev/ttyUSB0"})


def test_map_file_is_relative_to_the_config_folder(tmp_path: Path) -> None:
    source = SensorSourceSettings.model_validate(
        {"name": "probe", "reader": {"type": "modbus_tcp", "host": "h", "map_file": "maps/mine.toml"}}
    )
    resolved = resolve_paths(source, tmp_path)
    assert resolved.reader.map_file == tmp_path / "maps" / "mine.toml"  # type: ignore[attr-defined]


def test_channel_units_come_from_the_vocabulary() -> None:
    assert SensorChannel.model_validate({"sensor": "s", "quantity": "soil_ec"}).unit == "dS m-1"
    assert SensorChannel.model_validate({"sensor": "s", "quantity": "air_temperature", "unit": "degF"}).unit == "degF"
    with pytest.raises(ValidationError, match="use one of"):
        SensorChannel.model_validate({"sensor": "s", "quantity": "soil_ph", "unit": "%"})
