"""LoRaWAN bridge tests: the documented uplink fixtures and a bridge config around them."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from bridges.lorawan.config import LorawanConfig

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "lorawan"
CHIRPSTACK_EUI = "0101010101010101"
TTS_EUI = "0004a30b001c0530"


def fixture(name: str) -> dict[str, Any]:
    """A documented uplink without the fixture's own notes (keys starting with '_')."""
    doc = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return {k: v for k, v in doc.items() if not k.startswith("_")}


def chirpstack_up(
    dev_eui: str = CHIRPSTACK_EUI, f_cnt: int = 10, time: str | None = None, **obj: Any
) -> dict[str, Any]:
    doc = copy.deepcopy(fixture("chirpstack_v4_up.json"))
    doc["deviceInfo"]["devEui"] = dev_eui
    doc["fCnt"] = f_cnt
    if time is not None:
        doc["time"] = time
    doc["object"].update(obj)
    return doc


def tts_up(dev_eui: str = TTS_EUI.upper(), f_cnt: int = 7, **obj: Any) -> dict[str, Any]:
    doc = copy.deepcopy(fixture("tts_v3_up.json"))
    doc["end_device_ids"]["dev_eui"] = dev_eui
    doc["uplink_message"]["f_cnt"] = f_cnt
    doc["uplink_message"]["decoded_payload"].update(obj)
    return doc


def config_doc(fmt: str = "chirpstack", farm: str = "lora-farm") -> dict[str, Any]:
    """A lorawan.toml as a dict: a Dragino-style soil probe model (ChirpStack) and a per-device map (TTS)."""
    return {
        "network_server": {"format": fmt},
        "cropwatch": {"username": "cropwatch-bridge-lorawan"},
        "bridge": {"problem_log_every_s": 0.01},
        "models": {
            "soil-probe": {
                "fields": {
                    "temp_SOIL": {"quantity": "soil_temperature", "unit": "degC"},
                    "water_SOIL": {"quantity": "soil_moisture", "unit": "%"},
                    "conduct_SOIL": {"quantity": "soil_ec", "unit": "uS cm-1"},
                    "BatV": {"quantity": "battery_voltage", "unit": "V", "sensor": "battery"},
                },
                "ignore": ["Mod"],
            }
        },
        "devices": [
            {"dev_eui": CHIRPSTACK_EUI, "farm": farm, "device": "lora-soil-1", "field": "north", "model": "soil-probe"},
            {
                "dev_eui": TTS_EUI.upper(),
                "farm": farm,
                "device": "lora-soil-2",
                "field": "south",
                "fields": {
                    "temperature": {"quantity": "soil_temperature"},
                    "soil_moisture": {"quantity": "soil_moisture", "unit": "m3 m-3"},
                    "ec": {"quantity": "soil_ec", "unit": "mS/cm"},
                    "battery_mv": {"quantity": "battery_voltage", "unit": "mV", "sensor": "battery"},
                },
                "ignore": ["battery_pct"],
            },
        ],
    }


def make_config(fmt: str = "chirpstack", **sections: dict[str, Any]) -> LorawanConfig:
    doc = config_doc(fmt)
    for name, values in sections.items():
        doc[name] = {**doc.get(name, {}), **values}
    return LorawanConfig.model_validate(doc)
