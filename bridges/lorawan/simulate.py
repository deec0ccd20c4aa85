"""A simulated LoRaWAN soil probe: ChirpStack v4 ``up`` events, as its MQTT integration publishes them.

For the demo and the bench: the event has the documented shape (tests/fixtures/lorawan) with a
decoded ``object`` as a Dragino LSE01-style codec gives it (temp_SOIL in degC, water_SOIL in %,
conduct_SOIL in uS/cm, BatV in V). Values drift slowly and dry out between "rain" events, so a
chart of them looks like a field.
"""

from __future__ import annotations

import json
import math
import random
import uuid
from datetime import UTC, datetime
from typing import Any

APPLICATION_ID = "5f0c2a39-7c35-4d56-8e4e-2b7f0e8f1a11"
# The field map that matches the simulated codec's object, as lorawan.toml's [models.NAME] table.
SOIL_PROBE_FIELDS: dict[str, dict[str, Any]] = {
    "temp_SOIL": {"quantity": "soil_temperature", "unit": "degC"},
    "water_SOIL": {"quantity": "soil_moisture", "unit": "%"},
    "conduct_SOIL": {"quantity": "soil_ec", "unit": "uS cm-1"},
    "BatV": {"quantity": "battery_voltage", "unit": "V", "sensor": "battery"},
}


def uplink_topic(dev_eui: str, application_id: str = APPLICATION_ID) -> str:
    return f"application/{application_id}/device/{dev_eui}/event/up"


class SoilProbe:
    def __init__(self, dev_eui: str, seed: int = 0) -> None:
        self.dev_eui = dev_eui
        self.rng = random.Random(seed)
        self.f_cnt = 0
        self.moisture = 32.0
        self.battery = 3.62

    def event(self, when: datetime | None = None) -> dict[str, Any]:
        when = when or datetime.now(UTC)
        self.f_cnt += 1
        hour = when.hour + when.minute / 60
        self.moisture = max(8.0, self.moisture - 0.05 + (6.0 if self.rng.random() < 0.01 else 0.0))
        self.battery = max(3.0, self.battery - 0.0001)
        temperature = 17 + 4 * math.sin((hour - 9) / 24 * 2 * math.pi) + self.rng.gauss(0, 0.1)
        return {
            "deduplicationId": str(uuid.UUID(int=self.rng.getrandbits(128))),
            "time": when.isoformat(),
            "deviceInfo": {
                "tenantName": "ChirpStack",
                "applicationId": APPLICATION_ID,
                "applicationName": "cropwatch-demo",
                "deviceProfileName": "Dragino LSE01",
                "deviceName": "soil-probe",
                "devEui": self.dev_eui,
            },
            "devAddr": "00189440",
            "dr": 5,
            "fCnt": self.f_cnt,
            "fPort": 2,
            "object": {
                "temp_SOIL": round(temperature, 2),
                "water_SOIL": round(self.moisture + self.rng.gauss(0, 0.2), 2),
                "conduct_SOIL": round(350 + 8 * self.moisture + self.rng.gauss(0, 5)),
                "BatV": round(self.battery, 3),
                "Mod": 0,
            },
            "rxInfo": [
                {
                    "gatewayId": "0016c001f153a14c",
                    "rssi": round(-95 + self.rng.gauss(0, 3)),
                    "snr": round(7 + self.rng.gauss(0, 1.5), 1),
                }
            ],
            "txInfo": {"frequency": 868100000, "modulation": {"lora": {"bandwidth": 125000, "spreadingFactor": 7}}},
        }

    def payload(self, when: datetime | None = None) -> bytes:
        return json.dumps(self.event(when)).encode()
