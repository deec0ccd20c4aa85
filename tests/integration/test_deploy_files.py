"""The deploy kit: systemd units pass systemd-analyze, compose files pass the Compose spec."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = sorted((REPO / "deploy" / "systemd").glob("*.service"))
COMPOSE = [REPO / "deploy" / "compose" / "compose.yaml", REPO / "deploy" / "emqx" / "compose.yaml"]


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_systemd_unit_verifies(unit: Path, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    cropwatch = shutil.which("cropwatch")
    if cropwatch is None:
        pytest.skip("the cropwatch console script is not installed (pip install -e .)")
    # ExecStart must name an existing executable for verify; point it at this machine's script.
    text = unit.read_text().replace("/usr/local/bin/cropwatch", cropwatch)
    target = tmp_path / unit.name.replace("@.service", "@test.service")
    target.write_text(text)
    result = subprocess.run([analyze, "verify", str(target)], capture_output=True, text=True, timeout=60)
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip()
        and str(target.name) in line
        # A container has no D-Bus or users database; those lines say nothing about the unit.
        and not any(s in line for s in ("Failed to connect to bus", "is not a valid user", "Unknown user"))
    ]
    assert not problems, "\n".join(problems)


def test_agent_unit_has_watchdog_restart_and_sandbox() -> None:
    text = (REPO / "deploy" / "systemd" / "cropwatch-agent.service").read_text()
    for needle in ("Type=notify", "WatchdogSec=", "Restart=always", "ProtectSystem=strict", "NoNewPrivileges=yes"):
        assert needle in text


TIMERS = sorted((REPO / "deploy" / "systemd").glob("*.timer"))


@pytest.mark.parametrize("timer", TIMERS, ids=[t.name for t in TIMERS])
def test_systemd_timer_verifies_with_its_service(timer: Path, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    cropwatch = shutil.which("cropwatch")
    if analyze is None or cropwatch is None:
        pytest.skip("systemd-analyze or the cropwatch console script is not installed")
    service = timer.with_suffix(".service")
    assert service.is_file(), f"{timer.name} starts {service.name}, which is missing"
    (tmp_path / service.name).write_text(service.read_text().replace("/usr/local/bin/cropwatch", cropwatch))
    (tmp_path / timer.name).write_text(timer.read_text())
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / timer.name)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip()
        and (timer.name in line or service.name in line)
        and not any(s in line for s in ("Failed to connect to bus", "is not a valid user", "Unknown user"))
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("compose", COMPOSE, ids=[c.parent.name for c in COMPOSE])
def test_compose_file_matches_the_compose_spec(compose: Path) -> None:
    checker = shutil.which("check-jsonschema")
    if checker is None:
        pytest.skip("check-jsonschema is not installed (dev extra)")
    result = subprocess.run(
        [checker, "--builtin-schema", "vendor.compose-spec", str(compose)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_cloud_compose_scales_ingest_on_a_shared_subscription() -> None:
    import yaml

    doc = yaml.safe_load((REPO / "deploy" / "compose" / "compose.yaml").read_text())
    assert doc["services"]["ingest"]["deploy"]["replicas"] >= 2
    assert set(doc["services"]) >= {"mosquitto", "postgres", "ingest", "monitor", "registry"}
    mounted = doc["services"]["mosquitto"]["volumes"][0]
    assert (
        REPO / "deploy" / "compose" / mounted.split(":")[0]
    ).resolve() == REPO / "deploy" / "mosquitto" / "mosquitto.conf"


def test_torchrun_script_trains_with_two_cpu_processes(tmp_path: Path) -> None:
    """The shipped multi-node launcher, as one node with two CPU processes (gloo)."""
    import json
    import os

    from tests.services import cropwatch_cmd, cropwatch_env, free_port

    if shutil.which("torchrun") is None:
        pytest.skip("torchrun is not installed (trainer extra)")
    cube = tmp_path / "cube.nc"
    subprocess.run(
        cropwatch_cmd("data", "synth-yield", str(cube), "--fields", "12", "--seasons", "3", "--days", "40"),
        env=cropwatch_env(), check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    env = cropwatch_env(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), NNODES="1", NODE_RANK="0", GPUS_PER_NODE="2",
        TASK="yield", DATA=str(cube), OUT=str(tmp_path / "run"), OMP_NUM_THREADS="1",
    )  # fmt: skip
    result = subprocess.run(
        ["bash", str(REPO / "deploy" / "training" / "torchrun-multinode.sh"), "--epochs", "2", "--quiet",
         "--no-plots", "--threads", "1"],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["task"] == "yield_forecast" and config["world_size"] == 2
    assert os.path.exists(tmp_path / "run" / "run.json")
