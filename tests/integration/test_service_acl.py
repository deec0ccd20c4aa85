"""Service users' ACL blocks (the LoRaWAN bridge's) survive `cropwatch devices provision`, in a real Mosquitto."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridges.lorawan.config import LorawanConfig, acl_lines
from farm_monitor import devices_cli
from farm_monitor.provision import Pki, ProvisionError, mosquitto_password_hash
from tests.lorawan_helpers import config_doc
from tests.services import private_mosquitto, puback_code

pytestmark = pytest.mark.integration

BRIDGE_USER = "cropwatch-bridge-lorawan"
NOT_AUTHORISED = 135
ACCEPTED = (0, 16)  # success, and success with "no matching subscribers" (nobody reads here)


def _provision(pki: Path, out: Path, device: str) -> str:
    args = ["--pki", str(pki), "provision", device, "--farm", "lora-farm", "--out", str(out)]
    assert devices_cli.main(args) == 0
    return (out / f"lora-farm.{device}" / "mqtt.password").read_text().strip()


def test_a_reprovision_keeps_the_bridge_block_and_devices_stay_confined(tmp_path: Path) -> None:
    pki, out = tmp_path / "pki", tmp_path / "devices"
    _provision(pki, out, "gw-01")
    # The operator's setup of the bridge: its block from --print-acl, its user in the password file.
    (pki / "services").mkdir()
    (pki / "services" / "lorawan-bridge.acl").write_text(acl_lines(LorawanConfig.model_validate(config_doc())))
    with (pki / "mosquitto.passwd").open("a") as f:
        f.write(f"{BRIDGE_USER}:{mosquitto_password_hash('bridge-pw')}\n")
    assert devices_cli.main(["--pki", str(pki), "acl"]) == 0
    # Then devices are provisioned again, which rewrites both broker files.
    gw1 = _provision(pki, out, "gw-01")
    gw2 = _provision(pki, out, "gw-02")
    lines = [f"password_file {pki / 'mosquitto.passwd'}", f"acl_file {pki / 'mosquitto.acl'}", "allow_anonymous false"]
    with private_mosquitto(tmp_path / "broker", lines) as broker:
        bridge = (broker, BRIDGE_USER, "bridge-pw")
        assert puback_code(*bridge, "cropwatch/v1/lora-farm/lora-soil-1/telemetry") in ACCEPTED
        assert puback_code(*bridge, "cropwatch/v1/lora-farm/gw-01/telemetry") == NOT_AUTHORISED
        assert puback_code(broker, "lora-farm.gw-01", gw1, "cropwatch/v1/lora-farm/gw-01/telemetry") in ACCEPTED
        assert puback_code(broker, "lora-farm.gw-01", gw1, "cropwatch/v1/lora-farm/gw-02/telemetry") == NOT_AUTHORISED
        assert (
            puback_code(broker, "lora-farm.gw-02", gw2, "cropwatch/v1/lora-farm/lora-soil-1/telemetry")
            == NOT_AUTHORISED
        )


@pytest.mark.parametrize(
    ("block", "error"),
    [
        ("topic write cropwatch/v1/#\n", "a topic line before any user line"),
        ("user svc\npattern write cropwatch/v1/%u/#\n", "only 'user', 'topic' and comment lines"),
        ("user lora-farm.gw-01\ntopic write cropwatch/v1/#\n", "is a device or cloud user"),
        ("# nothing\n", "no 'user NAME' line"),
    ],
)
def test_a_service_block_that_could_widen_other_users_rights_is_refused(tmp_path: Path, block: str, error: str) -> None:
    pki = Pki(tmp_path / "pki")
    pki.provision("lora-farm", "gw-01", tmp_path / "devices", "localhost", 8883)
    before = (tmp_path / "pki" / "mosquitto.acl").read_text()
    (tmp_path / "pki" / "services").mkdir()
    (tmp_path / "pki" / "services" / "bad.acl").write_text(block)
    with pytest.raises(ProvisionError, match=error):
        pki.provision("lora-farm", "gw-02", tmp_path / "devices", "localhost", 8883)
    assert (tmp_path / "pki" / "mosquitto.acl").read_text() == before
    assert devices_cli.main(["--pki", str(tmp_path / "pki"), "acl"]) == 2
