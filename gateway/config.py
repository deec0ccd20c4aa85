"""``gateway.toml``: the health reporter's one config tree (``cropwatch gateway health``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from shared.fields import Id
from shared.settings import MqttSettings


class GatewayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    farm_id: Id
    gateway_id: Id = Field("gateway", description="The device id the gateway's reports carry (no device's id).")
    bridge: Id = Field("cloud", description="The bridge's `connection` name in the gateway's mosquitto.conf.")
    interval_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    disk_path: str = Field("/var/lib/cropwatch", description="Disk free is reported for the filesystem of this path.")
    labels_database: str | None = Field(
        None, description="The farm database (monitor.toml's database.url): its new labels are sent to the cloud."
    )
    labels_cursor_file: str = Field(
        "/var/lib/cropwatch/gateway/labels.cursor", description="The last label sent (survives restarts)."
    )
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    log_level: str = "info"
