"""The README's main command, end to end: broker, registry, ingest, agents; detections reach the database."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

from tests.edge_models import build_classifier
from tests.services import cropwatch_cmd, cropwatch_env, missing_service, mosquitto_binary


def test_demo_farm_stores_detections_and_stops_cleanly(tmp_path: Path, team_data: Path) -> None:
    if mosquitto_binary() is None:
        missing_service("the mosquitto binary")
    # A prepared tiny model stands in for the demo's fine-tuning, which the trainer tests cover.
    model = build_classifier(tmp_path / "model", name="leaf-disease", version="0.0.1")
    photos = team_data / "leaf_sample"
    result = subprocess.run(
        cropwatch_cmd(
            "demo",
            "--data-dir",
            str(tmp_path / "demo"),
            "--devices",
            "2",
            "--photo-interval",
            "1",
            "--duration",
            "4",
            "--no-monitor",
            "--model-manifest",
            str(model.manifest_path),
            "--trusted-key",
            str(model.public_key),
            "--photos",
            str(photos),
        ),
        env=cropwatch_env(COLUMNS="120"),
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "first detection stored" in out and "all demo processes stopped" in out
    with sqlite3.connect(tmp_path / "demo" / "cropwatch.db") as conn:
        detections = conn.execute("SELECT COUNT(*), COUNT(DISTINCT device_id) FROM detections").fetchone()
        model_versions = {row[0] for row in conn.execute("SELECT DISTINCT model_version FROM detections")}
        devices = conn.execute("SELECT COUNT(*) FROM devices").fetchone()[0]
    assert detections[0] >= 2 and detections[1] >= 1
    assert model_versions == {"0.0.1"}
    assert devices == 2
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path / "demo")], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", "demo processes left running"
