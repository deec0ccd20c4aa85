"""The README's main command, end to end: broker, registry, ingest, agents; detections and yield
estimates reach the database."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import urllib.request
from pathlib import Path

from tests.edge_models import build_classifier
from tests.services import (
    cropwatch_cmd,
    cropwatch_env,
    free_port,
    missing_service,
    mosquitto_binary,
    port_open,
    wait_for,
)


def test_demo_farm_stores_detections_and_stops_cleanly(tmp_path: Path, team_data: Path) -> None:
    if mosquitto_binary() is None:
        missing_service("the mosquitto binary")
    # A prepared tiny model stands in for the demo's fine-tuning, which the trainer tests cover; the
    # yield model is the demo's own (synthetic cube, training, export: well under a minute).
    model = build_classifier(tmp_path / "model", name="leaf-disease", version="0.0.1")
    photos = team_data / "leaf_sample"
    port = free_port()
    proc = subprocess.Popen(
        cropwatch_cmd(
            "demo",
            "--data-dir",
            str(tmp_path / "demo"),
            "--devices",
            "2",
            "--photo-interval",
            "1",
            "--duration",
            "6",
            "--port",
            str(port),
            "--model-manifest",
            str(model.manifest_path),
            "--trusted-key",
            str(model.public_key),
            "--photos",
            str(photos),
        ),
        env=cropwatch_env(COLUMNS="120"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def monitor_up() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    served = wait_for(lambda: monitor_up() or proc.poll() is not None, timeout=120, what="the monitor to serve")
    assert monitor_up() or (served and proc.poll() is None), "the monitor never answered"
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-4000:]
    assert "first detection stored" in out and "all demo processes stopped" in out
    assert "first yield estimate stored" in out, out[-4000:]
    assert "password cropwatch-demo" in out
    assert "notify      alerts to the agronomist by mail" in out and (tmp_path / "demo" / "mailbox").is_dir()
    assert "Traceback" not in (tmp_path / "demo" / "logs" / "notify.log").read_text()
    with sqlite3.connect(tmp_path / "demo" / "cropwatch.db") as conn:
        detections = conn.execute("SELECT COUNT(*), COUNT(DISTINCT device_id) FROM detections").fetchone()
        model_versions = {row[0] for row in conn.execute("SELECT DISTINCT model_version FROM detections")}
        devices = {row[0] for row in conn.execute("SELECT device_id FROM devices")}
        lora = conn.execute(
            "SELECT DISTINCT quantity, field_id FROM telemetry WHERE device_id = 'lora-soil-1'"
        ).fetchall()
        yields = conn.execute("SELECT DISTINCT model_name, model_version, crop FROM yield_estimates").fetchall()
        probe_sql = "SELECT DISTINCT quantity FROM telemetry WHERE sensor IN ('probe1', 'npk1')"
        probe = {r[0] for r in conn.execute(probe_sql)}
    assert detections[0] >= 2 and detections[1] >= 1
    assert model_versions == {"0.0.1"}
    # The version the demo published through the rollout path is the one that made the estimates.
    published = json.loads((tmp_path / "demo" / "yield" / "run" / "export" / "manifest.json").read_text())
    assert yields == [(published["name"], published["version"], "corn")]
    # The simulated Modbus bus, read by the first agent through the modbus_tcp reader.
    assert probe == {"soil_moisture", "soil_temperature", "soil_ec", "nitrogen", "phosphorus", "potassium"}
    # The two gateways, and the LoRaWAN soil probe whose replayed ChirpStack uplinks the bridge carried.
    assert devices == {"gw-north", "gw-south", "lora-soil-1"}
    assert set(lora) == {
        (q, "north-field") for q in ("soil_temperature", "soil_moisture", "soil_ec", "battery_voltage")
    }
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path / "demo")], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", "demo processes left running"
    assert not port_open("127.0.0.1", port), "the monitor's web server outlived the demo"
