"""The bridge's config tree (lorawan.toml), loaded by ``shared.config.load_config``.

Two broker sections, because the two brokers belong to different people: ``[network_server]`` is
the LoRaWAN network server's broker (ChirpStack's or The Things Stack's), ``[cropwatch]`` is the
farm's broker, where the bridge logs in with its own user and may publish only for the devices
mapped here (``--print-acl``). A field map names, per decoded-payload field, the quantity, the unit
the decoder reports it in and an optional scale; it is checked against the quantity vocabulary when
the config loads, so a typo is a config error and never a dropped reading at run time.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.fields import Id
from shared.quantities import QUANTITIES, Quantity
from shared.settings import MqttSettings

Format = Literal["chirpstack", "tts"]
# What each network server's MQTT integration publishes an uplink on (ChirpStack v4:
# application/{application_id}/device/{dev_eui}/event/up; TTS v3: v3/{app}@{tenant}/devices/{id}/up).
UPLINK_TOPICS: dict[Format, str] = {
    "chirpstack": "application/+/device/+/event/up",
    "tts": "v3/+/devices/+/up",
}
Interval = Annotated[float, Field(gt=0, le=7 * 86400)]
_EUI = re.compile(r"^[0-9a-f]{16}$")


def normalise_eui(value: str) -> str:
    """A DevEUI as 16 lowercase hex digits (ChirpStack sends lowercase, TTS uppercase; people type dashes)."""
    eui = value.strip().lower().replace("-", "").replace(":", "")
    if not _EUI.fullmatch(eui):
        raise ValueError(f"dev_eui {value!r} must be 16 hex digits (an EUI-64), e.g. a84041000181c061")
    return eui


class NetworkServerSettings(MqttSettings):
    """The network server's broker and which integration format it speaks."""

    format: Format = "chirpstack"
    topic: str | None = Field(None, description="Subscription filter; default: the format's uplink topic.")
    qos: Literal[0, 1] = 1

    @property
    def uplink_topic(self) -> str:
        return self.topic or UPLINK_TOPICS[self.format]


class FieldMap(BaseModel):
    """One decoded-payload field: canonical = to_canonical(quantity, raw * scale, unit)."""

    model_config = ConfigDict(extra="forbid")
    quantity: Quantity
    unit: str | None = Field(None, description="The unit the decoder reports; default: the quantity's canonical unit.")
    scale: float = 1.0
    sensor: Id | None = Field(None, description="Sensor id in the reading; default: from the field name.")

    @model_validator(mode="after")
    def _known_unit(self) -> FieldMap:
        spec = QUANTITIES[self.quantity]
        if self.unit is not None and self.unit not in spec.units:
            raise ValueError(f"unit {self.unit!r} is not known for {self.quantity}; use one of {', '.join(spec.units)}")
        return self


class ModelMap(BaseModel):
    """The field map of a device model (every device of the model decodes the same way)."""

    model_config = ConfigDict(extra="forbid")
    fields: dict[str, FieldMap] = Field(default_factory=dict)
    ignore: list[str] = Field(default_factory=list, description="Decoded fields deliberately not bridged.")
    interval_s: Interval | None = Field(None, description="Expected uplink interval; default: [bridge] interval_s.")


class DeviceMap(BaseModel):
    """One LoRaWAN device and the Cropwatch identity its readings are published under."""

    model_config = ConfigDict(extra="forbid")
    dev_eui: str
    farm: Id
    device: Id
    field: Id | None = None
    model: str | None = Field(None, description="A [models.NAME] table; its fields apply unless overridden here.")
    fields: dict[str, FieldMap] = Field(default_factory=dict)
    ignore: list[str] = Field(default_factory=list)
    interval_s: Interval | None = Field(None, description="Expected uplink interval; default: the model's.")

    @field_validator("dev_eui")
    @classmethod
    def _eui(cls, value: str) -> str:
        return normalise_eui(value)


class BridgeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Sensor health (shared/sensor_health.py): 900 s is the usual uplink interval of LoRaWAN soil
    # probes; a device silent for missing_after intervals gets a telemetry message of missing flags.
    interval_s: Interval = 900.0
    missing_after: Annotated[int, Field(ge=0, le=1000)] = 3
    stuck_after: Annotated[int, Field(ge=0, le=10_000)] = 10
    check_every_s: Annotated[float, Field(gt=0)] = Field(60.0, description="How often silent devices are looked for.")
    dedup_memory: Annotated[int, Field(ge=0, le=10_000_000)] = 100_000
    log_every_s: Annotated[float, Field(gt=0)] = 60.0
    problem_log_every_s: Annotated[float, Field(gt=0)] = Field(
        60.0, description="At most one log line per problem kind and device in this interval."
    )


class LorawanConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    network_server: NetworkServerSettings = Field(default_factory=NetworkServerSettings)
    cropwatch: MqttSettings = Field(default_factory=MqttSettings)
    bridge: BridgeSettings = Field(default_factory=BridgeSettings)
    models: dict[str, ModelMap] = Field(default_factory=dict)
    devices: list[DeviceMap] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> LorawanConfig:
        seen_eui: set[str] = set()
        seen_id: set[tuple[str, str]] = set()
        for i, dev in enumerate(self.devices):
            where = f"devices[{i}] ({dev.dev_eui})"
            if dev.dev_eui in seen_eui:
                raise ValueError(f"{where}: dev_eui is mapped twice")
            if (dev.farm, dev.device) in seen_id:
                raise ValueError(f"{where}: {dev.farm}/{dev.device} is already the identity of another device")
            if dev.model is not None and dev.model not in self.models:
                known = ", ".join(self.models) or "none defined"
                raise ValueError(f"{where}: model {dev.model!r} has no [models.{dev.model}] table ({known})")
            if not self.field_map(dev):
                raise ValueError(f"{where}: no fields mapped; give it a model or a fields table")
            seen_eui.add(dev.dev_eui)
            seen_id.add((dev.farm, dev.device))
        return self

    def field_map(self, dev: DeviceMap) -> dict[str, FieldMap]:
        """The device's fields: its model's, then its own (a device entry wins)."""
        model = self.models.get(dev.model) if dev.model else None
        return {**(model.fields if model else {}), **dev.fields}

    def interval_s(self, dev: DeviceMap) -> float:
        """The device's expected uplink interval: its own, its model's, then the bridge's default."""
        model = self.models.get(dev.model) if dev.model else None
        return dev.interval_s or (model.interval_s if model else None) or self.bridge.interval_s

    def ignored(self, dev: DeviceMap) -> set[str]:
        model = self.models.get(dev.model) if dev.model else None
        return set(dev.ignore) | set(model.ignore if model else [])


def acl_lines(config: LorawanConfig) -> str:
    """Mosquitto ACL block for the bridge's user: write telemetry for the mapped devices, nothing else."""
    user = config.cropwatch.username
    if not user:
        raise ValueError("[cropwatch] username is not set: the bridge needs a broker user of its own for the ACL")
    lines = [
        "# Generated by `cropwatch bridge lorawan --print-acl` from the bridge's device map.",
        f"user {user}",
    ]
    topics = sorted({f"cropwatch/v1/{d.farm}/{d.device}/telemetry" for d in config.devices})
    lines += [f"topic write {t}" for t in topics]
    return "\n".join(lines) + "\n"
