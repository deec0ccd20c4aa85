"""The LoRaWAN bridge's conversion: documented uplinks in, validated telemetry out, problems counted."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from bridges.lorawan.config import LorawanConfig, acl_lines
from bridges.lorawan.convert import Converter
from bridges.lorawan.simulate import SoilProbe
from bridges.lorawan.uplink import parse_uplink
from shared.ids import MSG_ID_RE, msg_id_time
from shared.messages import parse_device_message
from tests.lorawan_helpers import CHIRPSTACK_EUI, TTS_EUI, chirpstack_up, config_doc, fixture, make_config, tts_up

pytestmark = pytest.mark.unit


def _bytes(doc: object) -> bytes:
    return json.dumps(doc).encode()


def test_chirpstack_v4_fixture_becomes_telemetry_in_canonical_units() -> None:
    conv = Converter(make_config("chirpstack"))
    topic, msg = conv.convert(_bytes(fixture("chirpstack_v4_up.json"))) or ("", None)
    assert topic == "cropwatch/v1/lora-farm/lora-soil-1/telemetry"
    assert msg is not None and msg.field_id == "north"
    values = {r.quantity: (r.value, r.unit, r.sensor) for r in msg.readings}
    assert values == {
        "soil_temperature": (21.5, "degC", "temp_soil"),
        "soil_moisture": (34.2, "%", "water_soil"),
        "soil_ec": (pytest.approx(0.48), "dS m-1", "conduct_soil"),
        "battery_voltage": (3.61, "V", "battery"),
    }
    assert msg.observed_at == datetime(2022, 7, 18, 9, 34, 15, 775023, tzinfo=UTC)
    assert msg.link is not None
    assert (msg.link.rssi_dbm, msg.link.snr_db, msg.link.frame_counter) == (-36, 10.5, 10)
    assert (msg.link.gateway_id, msg.link.gateways) == ("0016c001f153a14c", 1)
    # What goes on the wire is what ingest accepts.
    assert parse_device_message(msg.to_json(), "telemetry") == msg
    assert conv.counters["unknown_field"] == 0  # Mod is ignored on purpose


def test_tts_v3_fixture_takes_the_best_gateway_and_converts_units() -> None:
    conv = Converter(make_config("tts"))
    result = conv.convert(_bytes(fixture("tts_v3_up.json")))
    assert result is not None
    topic, msg = result
    assert topic == "cropwatch/v1/lora-farm/lora-soil-2/telemetry"
    values = {r.quantity: r.value for r in msg.readings}
    assert values == pytest.approx(
        {"soil_temperature": 22.8, "soil_moisture": 31.8, "soil_ec": 1.2, "battery_voltage": 3.59}
    )
    assert msg.link is not None and msg.link.gateway_id == "gtw1" and msg.link.gateways == 2
    assert msg.link.frame_counter == 7 and msg.link.snr_db == 5.2
    assert msg.observed_at == datetime(2020, 2, 12, 15, 15, 45, 531000, tzinfo=UTC)


def test_msg_id_is_a_time_ordered_id_derived_from_eui_fcnt_and_time() -> None:
    conv = Converter(make_config("chirpstack", bridge={"dedup_memory": 0}))
    a = conv.convert(_bytes(chirpstack_up(f_cnt=11)))
    again = conv.convert(_bytes(chirpstack_up(f_cnt=11)))
    other = conv.convert(_bytes(chirpstack_up(f_cnt=12)))
    later = conv.convert(_bytes(chirpstack_up(f_cnt=11, time="2022-07-18T10:00:00Z")))
    assert a and again and other and later
    assert a[1].msg_id == again[1].msg_id  # a replay has the same id: ingest stores it once
    assert len({a[1].msg_id, other[1].msg_id, later[1].msg_id}) == 3  # a frame-counter reset is new data
    assert MSG_ID_RE.fullmatch(a[1].msg_id)
    assert msg_id_time(a[1].msg_id) == datetime(2022, 7, 18, 9, 34, 15, 775000, tzinfo=UTC)
    assert a[1].msg_id < later[1].msg_id


def test_exact_repeat_in_memory_is_dropped_and_counted() -> None:
    conv = Converter(make_config("chirpstack"))
    assert conv.convert(_bytes(chirpstack_up())) is not None
    assert conv.convert(_bytes(chirpstack_up())) is None
    assert conv.counters["duplicates"] == 1 and conv.counters["converted"] == 1


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        (b"[1, 2]", "bad_uplink"),
        (_bytes({"deviceInfo": {"devEui": "zz"}, "time": "2022-07-18T09:34:15Z"}), "bad_uplink"),
        (_bytes({**chirpstack_up(), "time": "yesterday"}), "bad_uplink"),
        (_bytes({**chirpstack_up(), "fCnt": -1}), "bad_uplink"),
        (_bytes(chirpstack_up(dev_eui="ffffffffffffffff")), "unknown_device"),
        (_bytes({k: v for k, v in chirpstack_up().items() if k != "object"}), "no_decoded_object"),
    ],
)
def test_bad_uplinks_are_counted_never_raised(payload: bytes, reason: str, caplog: pytest.LogCaptureFixture) -> None:
    conv = Converter(make_config("chirpstack"))
    assert conv.convert(payload) is None
    assert conv.counters[reason] == 1
    assert reason.split("_")[0] in caplog.text or "dropped" in caplog.text or "no decoded" in caplog.text


def test_unknown_and_bad_fields_are_counted_and_known_ones_still_published() -> None:
    conv = Converter(make_config("chirpstack"))
    result = conv.convert(_bytes(chirpstack_up(leaf_thing=3, water_SOIL="wet")))
    assert result is not None
    assert {r.quantity for r in result[1].readings} == {"soil_temperature", "soil_ec", "battery_voltage"}
    assert conv.counters["unknown_field"] == 1 and conv.counters["bad_value"] == 1
    assert conv.unknown_fields == {f"{CHIRPSTACK_EUI}:leaf_thing": 1}


def test_out_of_range_is_published_counted_and_flagged() -> None:
    conv = Converter(make_config("chirpstack"))
    result = conv.convert(_bytes(chirpstack_up(water_SOIL=140.0)))
    assert result is not None and any(r.value == 140.0 for r in result[1].readings)
    assert conv.counters["out_of_range"] == 1
    flags = [(h.sensor, h.quantity, h.state) for h in result[1].sensor_health]
    assert flags == [("water_soil", "soil_moisture", "out_of_range")]
    healthy = conv.convert(_bytes(chirpstack_up(f_cnt=11, water_SOIL=30.0)))
    assert healthy is not None and healthy[1].sensor_health == []


def test_a_stuck_value_is_flagged_after_stuck_after_uplinks() -> None:
    conv = Converter(make_config("chirpstack", bridge={"stuck_after": 3}))
    states = []
    for f_cnt in range(1, 5):
        result = conv.convert(_bytes(chirpstack_up(f_cnt=f_cnt)))
        assert result is not None
        states.append({h.state for h in result[1].sensor_health})
    assert states[:2] == [set(), set()] and states[2] == states[3] == {"stuck"}


def test_a_silent_device_gets_missing_flags_once_per_interval() -> None:
    now = [datetime(2026, 5, 1, 12, 0, tzinfo=UTC)]
    cfg = make_config("chirpstack", bridge={"interval_s": 600, "missing_after": 2})
    conv = Converter(cfg, wall=lambda: now[0])
    assert conv.convert(_bytes(chirpstack_up(f_cnt=1))) is not None
    now[0] += timedelta(seconds=1199)
    assert conv.silent() == []  # one interval missed: not yet
    now[0] += timedelta(seconds=1)
    out = conv.silent()
    assert [topic for topic, _ in out] == [
        "cropwatch/v1/lora-farm/lora-soil-1/telemetry", "cropwatch/v1/lora-farm/lora-soil-2/telemetry",
    ]  # fmt: skip
    heard = out[0][1]
    assert heard.readings == [] and {h.state for h in heard.sensor_health} == {"missing"}
    # Only the channels the device sent; the never-heard TTS device: every mapped channel.
    assert len(heard.sensor_health) == 4 and len(out[1][1].sensor_health) == 4
    assert heard.sensor_health[0].since == datetime(2026, 5, 1, 12, 10, tzinfo=UTC)
    assert conv.silent() == []  # nothing new until the next interval passes
    now[0] += timedelta(seconds=600)
    assert len(conv.silent()) == 2 and conv.counters["missing_messages"] == 4
    back = conv.convert(_bytes(chirpstack_up(f_cnt=2, time=now[0].isoformat())))
    assert back is not None and back[1].sensor_health == []


def test_rate_limited_log_says_how_many_it_held_back(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    conv = Converter(make_config("chirpstack", bridge={"problem_log_every_s": 60}), clock=lambda: now[0])
    for _ in range(5):
        conv.convert(b"nope")
    now[0] = 61.0
    conv.convert(b"nope")
    lines = [r.getMessage() for r in caplog.records if "invalid_json" in r.getMessage()]
    assert len(lines) == 2 and "4 more like this" in lines[1]
    assert conv.counters["invalid_json"] == 6


def test_eui_spelling_does_not_matter() -> None:
    up = parse_uplink(_bytes(tts_up(dev_eui="00-04-A3-0B-00-1C-05-30")), "tts")
    assert up.dev_eui == TTS_EUI


def test_acl_allows_only_the_mapped_devices_telemetry() -> None:
    text = acl_lines(make_config())
    assert text.splitlines()[1:] == [
        "user cropwatch-bridge-lorawan",
        "topic write cropwatch/v1/lora-farm/lora-soil-1/telemetry",
        "topic write cropwatch/v1/lora-farm/lora-soil-2/telemetry",
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["models"]["soil-probe"]["fields"]["temp_SOIL"].update(unit="kelvins"), "unit 'kelvins'"),
        (lambda d: d["models"]["soil-probe"]["fields"]["temp_SOIL"].update(quantity="soil_warmth"), "quantity"),
        (lambda d: d["devices"][0].update(model="nope"), "model 'nope'"),
        (lambda d: d["devices"][1].update(dev_eui=CHIRPSTACK_EUI), "mapped twice"),
        (lambda d: d["devices"][1].update(device="lora-soil-1"), "already the identity"),
        (lambda d: d["devices"][0].update(dev_eui="123"), "16 hex digits"),
        (lambda d: d["network_server"].update(format="loriot"), "format"),
    ],
)
def test_config_mistakes_are_named(change: object, message: str) -> None:
    doc = config_doc()
    change(doc)  # type: ignore[operator]
    with pytest.raises(ValidationError, match=message):
        LorawanConfig.model_validate(doc)


def test_demo_config_maps_the_simulated_probe(tmp_path: Path) -> None:
    from cropwatch.demo.lorawan import DEV_EUI, DEVICE_ID, lorawan_toml
    from shared.config import load_config

    cfg = load_config(LorawanConfig, lorawan_toml(tmp_path, "127.0.0.1", 1883), environ={})
    conv = Converter(cfg)
    result = conv.convert(SoilProbe(DEV_EUI).payload())
    assert result is not None and result[1].device_id == DEVICE_ID and result[1].field_id == "north-field"
    assert {r.quantity for r in result[1].readings} == {
        "soil_temperature",
        "soil_moisture",
        "soil_ec",
        "battery_voltage",
    }
    assert sum(conv.counters[k] for k in ("unknown_field", "out_of_range", "bad_value")) == 0


def test_cli_prints_the_acl_checks_the_config_and_names_mistakes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cropwatch.cli import main
    from cropwatch.demo.lorawan import lorawan_toml

    path = lorawan_toml(tmp_path, "127.0.0.1", 1883)
    path.write_text(
        path.read_text().replace("[cropwatch]\n", '[cropwatch]\nusername = "bridge"\npassword = "s3cret"\n')
    )
    assert main(["bridge", "lorawan", "--config", str(path), "--print-acl"]) == 0
    assert "user bridge\ntopic write cropwatch/v1/demo-farm/lora-soil-1/telemetry\n" in capsys.readouterr().out
    assert main(["bridge", "lorawan", "--config", str(path), "--check-config"]) == 0
    out = capsys.readouterr().out
    assert '"dev_eui": "a84041000181c061"' in out and "s3cret" not in out
    path.write_text(path.read_text().replace('"soil_ec"', '"soil_salt"'))
    assert main(["bridge", "lorawan", "--config", str(path)]) == 2
    assert "quantity" in capsys.readouterr().err
    assert main(["bridge", "lorawan", "--config", str(tmp_path / "missing.toml")]) == 2
    assert main(["bridge", "zigbee"]) == 2
    assert "unknown bridge 'zigbee'" in capsys.readouterr().err


def test_derived_msg_id_refuses_a_time_outside_48_bits() -> None:
    from shared.ids import derived_msg_id

    assert derived_msg_id(0, b"x") == "0000000000" + derived_msg_id(0, b"x")[10:]
    with pytest.raises(ValueError, match="48-bit"):
        derived_msg_id(1 << 48, b"x")
