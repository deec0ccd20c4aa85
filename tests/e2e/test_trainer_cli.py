"""The trainer's commands as an agronomist runs them: data -> train -> export, as processes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from shared.manifest import ModelManifest, TrustedKeys, load_public_key, verify_artifact, verify_manifest
from tests.services import cropwatch_cmd, cropwatch_env


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cropwatch_cmd(*args), env=cropwatch_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"cropwatch {' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_yield_data_train_export_through_the_cli(tmp_path: Path) -> None:
    cube, runs, keys = tmp_path / "synth.nc", tmp_path / "run", tmp_path / "keys"
    run("data", "synth-yield", str(cube), "--fields", "12", "--seasons", "3", "--days", "60", "--seed", "3")
    run("train", "yield", "--cube", str(cube), "--output-dir", str(runs), "--epochs", "3", "--threads", "1",
        "--quiet", "--no-plots")  # fmt: skip
    assert json.loads((runs / "run.json").read_text())["task"] == "yield_forecast"
    run("keys", "generate", "--out", str(keys))
    run("export", str(runs), "--key", str(keys / "cropwatch-signing.key"))
    manifests = list(runs.rglob("manifest.json"))
    assert len(manifests) == 1
    manifest = ModelManifest.load(manifests[0])
    assert manifest.task == "yield_forecast"
    verify_manifest(manifest, TrustedKeys([load_public_key(str(keys / "cropwatch-signing.pub"))]))
    verify_artifact(manifest, "fp32", manifests[0].parent / manifest.file("fp32").path)
