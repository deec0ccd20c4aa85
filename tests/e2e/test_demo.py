from __future__ import annotations

import subprocess
from pathlib import Path

from tests.services import cropwatch_cmd, cropwatch_env, missing_service, mosquitto_binary


def test_demo_runs_end_to_end_and_every_message_arrives(tmp_path: Path) -> None:
    if mosquitto_binary() is None:
        missing_service("the mosquitto binary")
    result = subprocess.run(
        cropwatch_cmd("demo", "--rounds", "1", "--data-dir", str(tmp_path / "demo")),
        env=cropwatch_env(COLUMNS="120"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sent 18, received 18, rejected 0" in result.stdout
