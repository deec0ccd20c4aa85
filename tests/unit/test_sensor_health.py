"""Sensor health logic (shared/sensor_health.py) and the telemetry contract's sensor_health field."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from shared.errors import MessageError
from shared.examples import example_messages
from shared.messages import parse_device_message
from shared.sensor_health import SensorHealthTracker

T0 = datetime(2026, 6, 1, tzinfo=UTC)
SOIL = ("soil1", "soil_moisture")


def at(i: int) -> datetime:
    return T0 + timedelta(minutes=5 * i)


def states(flags) -> set[str]:  # type: ignore[no-untyped-def]
    return {f.state for f in flags}


def test_out_of_range_is_flagged_from_the_first_bad_reading_and_clears() -> None:
    h = SensorHealthTracker()
    assert h.observe([SOIL], {SOIL: 30.0}, at(0)) == []
    flags = h.observe([SOIL], {SOIL: 130.0}, at(1))
    assert [(f.sensor, f.quantity, f.state, f.since) for f in flags] == [
        ("soil1", "soil_moisture", "out_of_range", at(1))
    ]
    assert h.observe([SOIL], {SOIL: 140.0}, at(2))[0].since == at(1)
    assert h.observe([SOIL], {SOIL: 31.0}, at(3)) == []


def test_stuck_after_n_identical_readings_but_not_at_a_range_end() -> None:
    h = SensorHealthTracker(stuck_after=3)
    rain = ("gauge", "rainfall")
    for i in range(2):
        assert h.observe([SOIL, rain], {SOIL: 22.5, rain: 0.0}, at(i)) == []
    flags = h.observe([SOIL, rain], {SOIL: 22.5, rain: 0.0}, at(2))
    assert [(f.sensor, f.state, f.since) for f in flags] == [("soil1", "stuck", at(0))]  # a dry gauge reads 0
    assert h.observe([SOIL], {SOIL: 22.6}, at(3)) == []


def test_missing_after_n_intervals_keeps_other_states_and_clears_on_a_value() -> None:
    h = SensorHealthTracker(missing_after=2)
    h.observe([SOIL], {SOIL: 200.0}, at(0))
    assert states(h.observe([SOIL], {}, at(1))) == {"out_of_range"}
    flags = h.observe([SOIL], {}, at(2))
    assert states(flags) == {"out_of_range", "missing"}
    assert next(f for f in flags if f.state == "missing").since == at(1)
    assert h.observe([SOIL], {SOIL: 40.0}, at(3)) == []


def test_checks_can_be_switched_off_and_bad_limits_are_refused() -> None:
    h = SensorHealthTracker(stuck_after=0, missing_after=0)
    for i in range(20):
        assert h.observe([SOIL], {} if i % 2 else {SOIL: 10.0}, at(i)) == []
    with pytest.raises(ValueError, match="0 \\(off\\) or more"):
        SensorHealthTracker(stuck_after=-1)


def test_channels_not_expected_are_judged_too() -> None:
    h = SensorHealthTracker()
    flags = h.observe([], {("leaf9", "leaf_temperature"): 95.0}, at(0))
    assert [(f.sensor, f.state) for f in flags] == [("leaf9", "out_of_range")]


def _telemetry_doc() -> dict:  # type: ignore[type-arg]
    return json.loads(example_messages()["telemetry"].to_json())


def test_older_telemetry_without_sensor_health_is_still_valid() -> None:
    doc = _telemetry_doc()
    doc.pop("sensor_health")
    msg = parse_device_message(json.dumps(doc).encode(), expected_kind="telemetry")
    assert msg.sensor_health == []  # type: ignore[union-attr]


def test_telemetry_with_only_flags_is_valid_and_with_neither_is_not() -> None:
    doc = _telemetry_doc()
    doc["readings"] = []
    msg = parse_device_message(json.dumps(doc).encode(), expected_kind="telemetry")
    assert msg.sensor_health[0].state == "stuck"  # type: ignore[union-attr]
    doc["sensor_health"] = []
    with pytest.raises(MessageError) as err:
        parse_device_message(json.dumps(doc).encode(), expected_kind="telemetry")
    assert err.value.reason == "schema"
    doc = _telemetry_doc()
    doc["sensor_health"][0]["state"] = "sleepy"
    with pytest.raises(MessageError):
        parse_device_message(json.dumps(doc).encode(), expected_kind="telemetry")


class _Ctx:
    """The part of the agent a source talks to, recording what it gets."""

    def __init__(self) -> None:
        import threading

        self.stop_event = threading.Event()
        self.items: list[object] = []
        self.errors: list[str] = []

    def submit(self, item: object) -> bool:
        self.items.append(item)
        return True

    def count_error(self, code: str) -> None:
        self.errors.append(code)


class _FlakyProbe:
    """A reader (a stand-in for a bus probe) that answers, then fails, reporting its own errors."""

    def __init__(self) -> None:
        self.answers: list[dict[str, float] | None] = []
        self.closed = 0
        self.pending: dict[str, int] = {}

    def read(self) -> dict[str, float]:
        answer = self.answers.pop(0)
        if answer is None:
            self.pending = {"modbus_timeout": 2}
            raise OSError("slave 3: no answer")
        return answer

    def take_errors(self) -> dict[str, int]:
        out, self.pending = self.pending, {}
        return out

    def close(self) -> None:
        self.closed += 1


def test_the_sensors_source_converts_units_flags_health_and_counts_reader_errors() -> None:
    from edge_agent.sources.sensors import SensorPoller, SensorSourceSettings

    settings = SensorSourceSettings.model_validate(
        {
            "name": "probe",
            "reader": {"type": "simulated"},
            "channels": [
                {"sensor": "air1", "quantity": "air_temperature", "unit": "degF"},
                {"sensor": "soil1", "quantity": "soil_moisture", "unit": "m3 m-3"},
            ],
            "health": {"missing_intervals": 2},
        }
    )
    ctx, probe = _Ctx(), _FlakyProbe()
    poller = SensorPoller(settings, ctx, reader=probe)  # type: ignore[arg-type]
    probe.answers = [{"air_temperature": 68.0, "soil_moisture": 1.4}, None, None]
    for _ in range(3):
        poller.tick(False)
    # The first failed poll repeats the flag that still holds; the second adds missing for both channels.
    first, held, second = ctx.items
    assert held.readings == [] and [h.state for h in held.health] == ["out_of_range"]  # type: ignore[attr-defined]
    readings = {(r.quantity, r.unit): r.value for r in first.readings}  # type: ignore[attr-defined]
    assert readings == {("air_temperature", "degC"): pytest.approx(20.0), ("soil_moisture", "%"): pytest.approx(140.0)}
    assert [(h.sensor, h.state) for h in first.health] == [("soil1", "out_of_range")]  # type: ignore[attr-defined]
    assert second.readings == []  # type: ignore[attr-defined]
    assert {(h.sensor, h.state) for h in second.health} == {  # type: ignore[attr-defined]
        ("air1", "missing"),
        ("soil1", "missing"),
        ("soil1", "out_of_range"),
    }
    assert ctx.errors.count("sensor_read") == 2 and ctx.errors.count("modbus_timeout") == 4
    assert probe.closed == 2
