"""The Modbus readers against pymodbus's own server as the probes: over TCP, and over RTU on a
serial line between two pseudo-terminals (tests/modbus_helpers.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cropwatch.demo.modbus_probe import ProbeServer, words
from edge_agent.sensors import READERS, build_reader
from edge_agent.sensors.modbus_bus import ModbusProbeReader
from tests.modbus_helpers import require_modbus_extra, serial_line
from tests.services import free_port

require_modbus_extra()

SOIL, NPK, WEATHER, DEAD, REFUSES = 1, 2, 5, 3, 4
# What the probes hold, as their datasheets encode it (see edge_agent/sensors/maps/).
SLAVES = {
    SOIL: {("holding", 0): 283, ("holding", 1): words(-101, "int16")[0], ("holding", 2): 1250},
    NPK: {("holding", 0x1E): 41, ("holding", 0x1F): 17, ("holding", 0x20): 96},
    WEATHER: {
        **{("holding", i): w for i, w in enumerate(words(1013.25, "float32") + words(64.5, "float32"))},
        **{("holding", 4 + i): w for i, w in enumerate(words(21.75, "float32"))},
        **{("holding", 8 + i): w for i, w in enumerate(words(12.5, "float32"))},
    },
    DEAD: {("holding", 0): 1},
    REFUSES: {("input", 0): 1},  # answers, but has none of the soil probe's holding registers
}
# A site's own map: word order CDAB and scale/offset on 32-bit values.
OWN_MAP = """
model = "test_probe"
sources = ["this test"]
[defaults]
slave_id = 6
[[registers]]
name = "level"
address = 10
register_type = "input"
data_type = "int32"
word_order = "little"
scale = 0.001
offset = -2.0
unit = "m"
quantity = "water_level"
[[registers]]
name = "co2"
address = 12
register_type = "input"
data_type = "float32"
word_order = "little"
unit = "ppm"
quantity = "co2"
"""
OWN = {**{("input", 10 + i): w for i, w in enumerate(words(3250, "int32", "little"))},
       **{("input", 12 + i): w for i, w in enumerate(words(415.5, "float32", "little"))}}  # fmt: skip

SOIL_VALUES = {"soil_moisture": 28.3, "soil_temperature": -10.1, "soil_ec": 1.25}  # canonical: %, degC, dS m-1


def reader(bus: dict[str, object], **kw: object) -> ModbusProbeReader:
    # 1 s: a probe server starved of CPU on a shared test machine still answers in time.
    r = build_reader(READERS.parse({**bus, "timeout_s": 1.0, "retries": 1, **kw}))
    assert isinstance(r, ModbusProbeReader)
    return r


def approx(values: dict[str, float]) -> object:
    return pytest.approx(values, rel=1e-6)


@pytest.fixture
def tcp_bus(tmp_path: Path) -> Iterator[dict[str, object]]:
    port = free_port()
    with ProbeServer({**SLAVES, 6: OWN}, tcp=("127.0.0.1", port), silent=[DEAD]):
        yield {"type": "modbus_tcp", "host": "127.0.0.1", "port": port}


@pytest.fixture
def rtu_bus() -> Iterator[dict[str, object]]:
    with serial_line() as (server_end, client_end):
        with ProbeServer({**SLAVES, 6: OWN}, serial_port=server_end, baudrate=115200, silent=[DEAD]):
            yield {"type": "modbus_rtu", "port": client_end, "baudrate": 115200}


@pytest.mark.parametrize("bus_name", ["tcp_bus", "rtu_bus"])
def test_probes_on_one_bus_read_their_registers(bus_name: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    bus = request.getfixturevalue(bus_name)
    own = tmp_path / "own.toml"
    own.write_text(OWN_MAP)
    soil = reader(bus, map="soil_mte_3in1")
    npk = reader(bus, map="soil_npk", slave_id=NPK)
    weather = reader(bus, map="weather_metsens300", slave_id=WEATHER)
    mine = reader(bus, map_file=str(own))
    try:
        assert soil.read() == approx(SOIL_VALUES)
        assert npk.read() == {"nitrogen": 41.0, "phosphorus": 17.0, "potassium": 96.0}
        assert weather.read() == approx(
            {"pressure": 1013.25, "relative_humidity": 64.5, "air_temperature": 21.75, "battery_voltage": 12.5}
        )
        assert mine.read() == approx({"water_level": 1.25, "co2": 415.5})  # 3250 * 0.001 - 2.0
        assert soil._bus is npk._bus is weather._bus is mine._bus  # one client, one lock for the port
        assert soil.take_errors() == {}
    finally:
        for r in (soil, npk, weather, mine):
            r.close()


@pytest.mark.parametrize("bus_name", ["tcp_bus", "rtu_bus"])
def test_a_dead_probe_and_a_refusing_probe_cost_only_their_own_readings(
    bus_name: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    bus = request.getfixturevalue(bus_name)
    soil = reader(bus, map="soil_mte_3in1")
    dead = reader(bus, map="soil_mte_3in1", slave_id=DEAD)
    refuses = reader(bus, map="soil_mte_3in1", slave_id=REFUSES)
    try:
        for _ in range(2):
            with pytest.raises(OSError, match=f"slave {DEAD}: no answer"):
                dead.read()
            assert soil.read() == approx(SOIL_VALUES)
            with pytest.raises(OSError, match=f"slave {REFUSES}: exception code 2"):
                refuses.read()
            assert soil.read() == approx(SOIL_VALUES)
        assert dead.take_errors() == {"modbus_timeout": 4}  # 2 reads, each 1 try + 1 retry
        assert refuses.take_errors() == {"modbus_exception_2": 2}  # an exception answer is not retried
        assert dead.take_errors() == {}
        assert soil.take_errors() == {}
    finally:
        for r in (soil, dead, refuses):
            r.close()


def test_a_probe_reconnects_after_the_last_reader_let_go(tmp_path: Path) -> None:
    port = free_port()
    bus = {"type": "modbus_tcp", "host": "127.0.0.1", "port": port}
    soil = reader(bus, map="soil_mte_3in1")
    with ProbeServer(SLAVES, tcp=("127.0.0.1", port)) as server:
        assert soil.read()["soil_moisture"] == pytest.approx(28.3)
        server.set(SOIL, "holding", 0, [305])
        assert soil.read()["soil_moisture"] == pytest.approx(30.5)
    with pytest.raises(OSError):
        soil.read()  # the probe is gone: the source logs, counts, closes the reader and carries on
    soil.close()
    with ProbeServer(SLAVES, tcp=("127.0.0.1", port)):
        assert soil.read()["soil_moisture"] == pytest.approx(28.3)
    soil.close()


def test_readers_on_threads_never_overlap_requests_on_the_shared_bus(rtu_bus: dict[str, object]) -> None:
    # One serial port: two requests in flight at once would garble both frames (CRC errors, or an
    # answer taken for the other probe's). Four pollers on four threads read 25 times each.
    readers = [reader(rtu_bus, map="soil_mte_3in1"), reader(rtu_bus, map="soil_npk", slave_id=NPK)]
    readers += [reader(rtu_bus, map="soil_mte_3in1"), reader(rtu_bus, map="soil_npk", slave_id=NPK)]
    results: list[dict[str, float]] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def poll(r: ModbusProbeReader) -> None:
        for _ in range(25):
            try:
                values = r.read()
            except BaseException as exc:
                failures.append(exc)
                return
            with lock:
                results.append(values)

    threads = [threading.Thread(target=poll, args=(r,)) for r in readers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert failures == []
        assert len(results) == 100
        assert sum(1 for v in results if v == approx(SOIL_VALUES)) == 50
        assert sum(1 for v in results if v == {"nitrogen": 41.0, "phosphorus": 17.0, "potassium": 96.0}) == 50
    finally:
        for r in readers:
            r.close()


def test_the_demo_probe_and_its_agent_config(tmp_path: Path) -> None:
    from cropwatch.demo.configs import agent_toml, demo_key
    from cropwatch.demo.modbus_probe import start_demo_probe
    from edge_agent.config import load_agent_config
    from shared.quantities import QUANTITIES
    from shared.sensor_health import SensorHealthTracker

    config = agent_toml(tmp_path, "gw-north", "north-field", "127.0.0.1", 1883, [demo_key(tmp_path)])
    server = start_demo_probe(config, free_port())
    try:
        sources = {s.name: s for s in load_agent_config(config).sources}
        assert {"soil", "modbus-soil", "modbus-npk"} <= set(sources)  # beside the simulated sensors
        health = SensorHealthTracker()
        for name in ("modbus-soil", "modbus-npk"):
            probe = build_reader(sources[name].reader)  # type: ignore[attr-defined]
            try:
                values = probe.read()
            finally:
                probe.close()
            channels = {(c.sensor, c.quantity) for c in sources[name].channels}  # type: ignore[attr-defined]
            assert {q for _, q in channels} == set(values)
            for q, v in values.items():
                assert QUANTITIES[q].low < v < QUANTITIES[q].high  # type: ignore[index]
            by_channel = {(s, q): values[q] for s, q in channels}
            assert health.observe(channels, by_channel, datetime.now(UTC)) == []
    finally:
        server.stop()
