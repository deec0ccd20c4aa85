"""The demo's LoRaWAN soil probe: simulated ChirpStack uplinks on the demo broker, and the bridge.

The simulated network server publishes under ``application/...`` on the same broker the farm uses;
``cropwatch bridge lorawan`` (a child process, like every component) maps the probe to
``lora-soil-1`` in the first field, so its readings show beside the gateways' sensors.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

from bridges.lorawan.simulate import SOIL_PROBE_FIELDS, SoilProbe, uplink_topic
from bridges.lorawan.transport import Publisher
from shared.settings import MqttSettings

from .processes import Stack
from .settings import FARM_ID, FIELDS

DEV_EUI = "a84041000181c061"
DEVICE_ID = "lora-soil-1"
UPLINK_INTERVAL_S = 5.0


def lorawan_toml(root: Path, host: str, port: int) -> Path:
    fields = "\n".join(
        f"{name} = {{ " + ", ".join(f'{k} = "{v}"' for k, v in spec.items()) + " }"
        for name, spec in SOIL_PROBE_FIELDS.items()
    )
    text = f"""# The demo's LoRaWAN bridge: a simulated ChirpStack on the demo broker, see docs/lorawan.md.
[network_server]
format = "chirpstack"
host = "{host}"
port = {port}

[cropwatch]
host = "{host}"
port = {port}

[bridge]
log_every_s = 30

[models.soil-probe]
ignore = ["Mod"]

[models.soil-probe.fields]
{fields}

[[devices]]
dev_eui = "{DEV_EUI}"
farm = "{FARM_ID}"
device = "{DEVICE_ID}"
field = "{FIELDS[0]}"
model = "soil-probe"
"""
    path = root / "lorawan.toml"
    path.write_text(text, encoding="utf-8")
    return path


class LorawanSensor:
    """The bridge process plus a thread replaying one probe's uplinks until :meth:`stop`."""

    def __init__(self, root: Path, host: str, port: int, stack: Stack) -> None:
        stack.start("bridge-lorawan", ["bridge", "lorawan", "--config", str(lorawan_toml(root, host, port))])
        self.counters: Counter[str] = Counter()
        self.network_server = Publisher(
            MqttSettings(host=host, port=port), "demo-chirpstack", self.counters, name="simulated network-server"
        )
        self.network_server.start()
        self.probe = SoilProbe(DEV_EUI)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._replay, name="lorawan-probe", daemon=True)
        self._thread.start()

    def _replay(self) -> None:
        # Like a real network server, it publishes whether or not the bridge is listening yet.
        while not self._stop.wait(UPLINK_INTERVAL_S):
            self.network_server.publish(uplink_topic(DEV_EUI), self.probe.payload())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.network_server.stop()
