"""End to end: a real agent reads a pymodbus TCP probe through the modbus_tcp reader and publishes
telemetry through a real Mosquitto into ingest; a sensor health flag raises an alert and a healthy
reading resolves it."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from cropwatch.demo.modbus_probe import ProbeServer, words
from edge_agent.config import load_agent_config
from edge_agent.daemon import Agent
from tests.edge_helpers import DEVICE, FARM, agent_config, to_toml
from tests.integration.ingest_helpers import config, ingest_thread, query
from tests.modbus_helpers import require_modbus_extra
from tests.services import free_port, wait_for

require_modbus_extra()

PROBE = {1: {("holding", 0): 283, ("holding", 1): words(185, "int16")[0], ("holding", 2): 900}}


def test_modbus_probe_to_database_with_a_sensor_health_alert(tmp_path: Path, mqtt_broker, sqlite_url: str) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    doc = agent_config(
        tmp_path,
        mqtt_broker.port,
        {},
        device={"farm_id": FARM, "device_id": DEVICE, "field_id": "north"},
        sources=[
            {
                "type": "sensors",
                "name": "probe",
                "interval_s": 0.2,
                "reader": {"type": "modbus_tcp", "host": "127.0.0.1", "port": port, "map": "soil_mte_3in1"},
                "channels": [
                    {"sensor": "soil-a", "quantity": "soil_moisture"},
                    {"sensor": "soil-a", "quantity": "soil_temperature"},
                    {"sensor": "soil-a", "quantity": "soil_ec"},
                ],
                "health": {"stuck_readings": 0},
            }
        ],
    )
    path = tmp_path / "agent.toml"
    path.write_text(to_toml(doc))
    key = f"sensor_health:{FARM}:{DEVICE}:soil-a:soil_moisture:out_of_range"

    def alert() -> list[tuple]:  # type: ignore[type-arg]
        return query(sqlite_url, f"SELECT resolved_at, device_id, field_id FROM alerts WHERE dedup_key = '{key}'")

    with ProbeServer(PROBE, tcp=("127.0.0.1", port)) as probe, ingest_thread(config(sqlite_url, mqtt_broker)):
        agent = Agent(load_agent_config(path), config_path=path)
        agent.start()
        thread = threading.Thread(target=agent.run, name="agent-main")
        thread.start()
        try:
            wait_for(
                lambda: query(sqlite_url, "SELECT COUNT(*) FROM telemetry WHERE quantity = 'soil_ec'")[0][0] >= 2,
                30, what="probe readings stored",
            )  # fmt: skip
            rows = query(
                sqlite_url,
                "SELECT sensor, quantity, value, unit, field_id FROM telemetry WHERE reading_index < 3 "
                "ORDER BY observed_at LIMIT 3",
            )
            assert sorted(rows) == [
                ("soil-a", "soil_ec", pytest.approx(0.9), "dS m-1", "north"),  # 900 uS/cm in canonical dS/m
                ("soil-a", "soil_moisture", pytest.approx(28.3), "%", "north"),
                ("soil-a", "soil_temperature", pytest.approx(18.5), "degC", "north"),
            ]
            assert alert() == []
            probe.set(1, "holding", 0, [1500])  # 150 %: a broken probe
            wait_for(alert, 30, what="the sensor_health alert")
            assert alert()[0] == (None, DEVICE, "north")
            flagged = query(
                sqlite_url, "SELECT COUNT(*) FROM telemetry WHERE quantity = 'soil_moisture' AND value = 150"
            )
            assert flagged[0][0] >= 1  # the reading keeps flowing, flagged
            probe.set(1, "holding", 0, [301])
            wait_for(lambda: alert()[0][0] is not None, 30, what="the alert resolved by a healthy reading")
        finally:
            agent.request_stop()
            thread.join(30)
            agent.stop()
