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
