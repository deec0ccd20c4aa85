"""Config sections that more than one daemon uses (the agent and the ingest service)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class TlsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure_skip_verify: bool = Field(False, description="Only for a lab broker with a self-made certificate.")


class MqttSettings(BaseModel):
    """How to reach the broker. Secrets: ``password`` or ``password_file``."""

    model_config = ConfigDict(extra="forbid")
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    transport: Literal["tcp", "websockets"] = "tcp"
    client_id: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    tls: TlsSettings = Field(default_factory=TlsSettings)
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    session_expiry_s: Annotated[int, Field(ge=0)] = 7 * 24 * 3600
    reconnect_min_s: Annotated[float, Field(gt=0)] = 1.0
    reconnect_max_s: Annotated[float, Field(gt=0)] = 120.0
    connect_timeout_s: Annotated[float, Field(gt=0)] = 10.0

    @property
    def url(self) -> str:
        scheme = "mqtts" if self.tls.enabled else "mqtt"
        return f"{scheme}://{self.host}:{self.port}"
