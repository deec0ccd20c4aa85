"""The agent's one config tree: ``cropwatch agent --config agent.toml``.

Every section has defaults a demo can run with; a field device sets at least ``[device]``,
``[mqtt]`` and its ``[[sources]]``. Environment overrides (``CROPWATCH_MQTT__HOST=...``) and
``password_file`` work as in :mod:`shared.config`.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from shared.config import load_config
from shared.fields import Id
from shared.settings import MqttSettings

STRICT = ConfigDict(extra="forbid")
PositiveSeconds = Annotated[float, Field(gt=0)]


class DeviceSettings(BaseModel):
    model_config = STRICT
    farm_id: Id
    device_id: Id
    field_id: Id | None = None
    groups: list[Id] = Field(default_factory=list, description="Rollout groups this device belongs to.")


class OutboxSettings(BaseModel):
    """The on-disk queue between results and the broker; see docs/edge-agent.md for the policy."""

    model_config = STRICT
    budget_mb: Annotated[float, Field(gt=0)] = 200.0
    # Per kind; None keeps messages until they are delivered. Events (alerts) never expire.
    ttl_s: dict[Literal["detection", "yield", "telemetry", "sample"], PositiveSeconds | None] = Field(
        default_factory=lambda: {
            "telemetry": 7 * 86400.0,
            "sample": 7 * 86400.0,
            "detection": 30 * 86400.0,
            "yield": 30 * 86400.0,
        }
    )
    max_inflight: Annotated[int, Field(ge=1, le=1000)] = 64


class ModelSettings(BaseModel):
    model_config = STRICT
    type: Literal["onnxruntime"] = "onnxruntime"
    manifest: Path
    # Providers to try, in order; those this onnxruntime build lacks are skipped.
    providers: list[str] = Field(
        default_factory=lambda: [
            "TensorrtExecutionProvider",
            "CUDAExecutionProvider",
            "OpenVINOExecutionProvider",
            "CPUExecutionProvider",
        ]
    )
    threads: Annotated[int, Field(ge=1, le=64)] = 2
    batch_size: Annotated[int, Field(ge=1, le=256)] = 8
    variants: list[Literal["fp32", "int8"]] = Field(default_factory=lambda: ["fp32", "int8"])
    # The int8 variant must beat fp32 by this factor, so noise in a short measurement does not flip it.
    int8_min_speedup: Annotated[float, Field(gt=0)] = 1.1
    top_k: Annotated[int, Field(ge=1, le=20)] = 3


class TrustSettings(BaseModel):
    model_config = STRICT
    public_keys: list[str] = Field(default_factory=list, description="PEM files or base64 Ed25519 public keys.")
    require_signature: bool = True
    # Desired-model messages must carry an envelope signature (rollout policy, URLs, downgrade flag
    # signed too); without this, one is checked when present.
    require_signed_rollout: bool = False


class UpdateSettings(BaseModel):
    """Over-the-air model updates from the farm's retained desired-model messages (docs/rollout.md)."""

    model_config = STRICT
    enabled: bool = True
    # A signed manifest may still name a file bigger than this device should ever fetch.
    max_download_mb: Annotated[float, Field(gt=0)] = 512.0
    # Per socket operation, and for the whole download (a stalled link must not hold the update forever).
    timeout_s: PositiveSeconds = 30.0
    download_deadline_s: PositiveSeconds = 3600.0
    token: SecretStr | None = Field(None, description="Bearer token for the registry; or token_file.")
    # Artifact URLs come in the (unsigned) message envelope: with this set, the token goes only to
    # URLs under the registry's address, never to a host someone else put in a message.
    token_url_prefix: str | None = Field(None, description="e.g. https://models.example.org/")
    # After a swap the new model is on trial: committed once this long has passed (and at least
    # health_min_images images went through it) with no more errors than the old one had.
    health_window_s: PositiveSeconds = 600.0
    health_min_images: Annotated[int, Field(ge=0)] = 0
    # A challenger kept from before a restart must be confirmed by its retained shadow message this
    # long after the first connection, or it is unloaded: an ended run (empty retained payload)
    # leaves nothing for a device that was offline to receive.
    shadow_confirm_s: PositiveSeconds = 30.0


class SampleSettings(BaseModel):
    """Low-confidence images sent for labelling."""

    model_config = STRICT
    enabled: bool = True
    confidence_below: Annotated[float, Field(ge=0, le=1)] = 0.6
    max_per_hour: Annotated[int, Field(ge=0)] = 10
    max_per_day: Annotated[int, Field(ge=0)] = 50
    max_side: Annotated[int, Field(ge=32, le=4096)] = 640


class FolderSource(BaseModel):
    model_config = STRICT
    type: Literal["folder"] = "folder"
    name: Id
    path: Path
    patterns: list[str] = Field(default_factory=lambda: ["*.jpg", "*.jpeg", "*.png", "*.JPG", "*.JPEG", "*.PNG"])
    after: Literal["keep", "move", "delete"] = "keep"
    move_to: Path | None = None
    scan_interval_s: PositiveSeconds = 2.0
    # A file must be this old (by mtime) before it is read, so an upload still being written is left alone.
    settle_s: Annotated[float, Field(ge=0)] = 1.0

    @model_validator(mode="after")
    def _move_target(self) -> FolderSource:
        if self.after == "move" and self.move_to is None:
            raise ValueError("after = 'move' needs move_to")
        return self


class CameraSource(BaseModel):
    model_config = STRICT
    type: Literal["camera"] = "camera"
    name: Id
    backend: Literal["opencv", "picamera2"] = "opencv"
    device: str = Field("0", description="OpenCV index ('0') or URL (rtsp://...).")
    interval_s: PositiveSeconds = 300.0
    jpeg_quality: Annotated[int, Field(ge=30, le=100)] = 90


class SimulatedCameraSource(BaseModel):
    model_config = STRICT
    type: Literal["simulated_camera"] = "simulated_camera"
    name: Id
    interval_s: PositiveSeconds = 60.0
    width: Annotated[int, Field(ge=32, le=8192)] = 640
    height: Annotated[int, Field(ge=32, le=8192)] = 480
    seed: int = 0
    count: Annotated[int, Field(ge=0)] | None = Field(None, description="Stop after this many images.")


class SensorChannel(BaseModel):
    model_config = STRICT
    sensor: Id
    quantity: Literal[
        "soil_moisture", "soil_temperature", "air_temperature", "relative_humidity", "leaf_wetness",
        "rainfall", "solar_radiation", "wind_speed", "battery_voltage",
    ]  # fmt: skip
    unit: str


class SerialReaderSettings(BaseModel):
    model_config = STRICT
    kind: Literal["serial"] = "serial"
    port: str = "/dev/ttyUSB0"
    baudrate: int = 9600
    timeout_s: PositiveSeconds = 2.0


class SimulatedReaderSettings(BaseModel):
    model_config = STRICT
    kind: Literal["simulated"] = "simulated"
    seed: int = 0


class SensorSource(BaseModel):
    model_config = STRICT
    type: Literal["sensors"] = "sensors"
    name: Id
    interval_s: PositiveSeconds = 300.0
    reader: Annotated[SerialReaderSettings | SimulatedReaderSettings, Field(discriminator="kind")] = Field(
        default_factory=SimulatedReaderSettings
    )
    channels: list[SensorChannel] = Field(
        default_factory=lambda: [
            SensorChannel(sensor="soil1", quantity="soil_moisture", unit="%"),
            SensorChannel(sensor="air1", quantity="air_temperature", unit="degC"),
            SensorChannel(sensor="air1", quantity="relative_humidity", unit="%"),
            SensorChannel(sensor="leaf1", quantity="leaf_wetness", unit="%"),
        ]
    )


SourceSettings = Annotated[
    FolderSource | CameraSource | SimulatedCameraSource | SensorSource, Field(discriminator="type")
]


class YieldVariableSource(BaseModel):
    """Where one season variable comes from: a sensor quantity aggregated per time step."""

    model_config = STRICT
    quantity: str
    aggregate: Literal["mean", "sum", "min", "max"] = "mean"
    # Readings times this factor, for a sensor in another unit than the model's (0.01: % to m3 m-3).
    scale: float = 1.0


class YieldSettings(BaseModel):
    model_config = STRICT
    enabled: bool = False
    model: ModelSettings | None = None
    interval_s: PositiveSeconds = 86400.0
    first_run_s: Annotated[float, Field(ge=0)] = Field(
        60.0, description="Seconds after start before the first outlook (at most interval_s), so sensors report first."
    )
    season_start: date | None = Field(None, description="Planting date; the season tensor starts here.")
    crop: Id | None = None
    # Season variable name -> sensor quantity; by default a variable named like a quantity uses it.
    variables: dict[str, YieldVariableSource] = Field(default_factory=dict)
    static_values: dict[str, float] = Field(default_factory=dict)
    weather_csv: Path | None = Field(None, description="CSV with a `date` column and one column per variable.")

    @model_validator(mode="after")
    def _complete(self) -> YieldSettings:
        # The model may come over the air instead (docs/rollout.md): then the runner starts with it.
        if self.enabled and self.season_start is None:
            raise ValueError("an enabled yield runner needs season_start (the planting date)")
        return self


class HeartbeatSettings(BaseModel):
    model_config = STRICT
    interval_s: PositiveSeconds = 60.0


class LogSettings(BaseModel):
    model_config = STRICT
    level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    format: Literal["json", "text"] = "json"


class AgentConfig(BaseModel):
    model_config = STRICT
    device: DeviceSettings
    data_dir: Path = Path("/var/lib/cropwatch")
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    trust: TrustSettings = Field(default_factory=TrustSettings)
    models: list[ModelSettings] = Field(default_factory=list, max_length=4)
    sources: list[SourceSettings] = Field(default_factory=list)
    samples: SampleSettings = Field(default_factory=SampleSettings)
    updates: UpdateSettings = Field(default_factory=UpdateSettings)
    yield_model: YieldSettings = Field(default_factory=YieldSettings, alias="yield")
    heartbeat: HeartbeatSettings = Field(default_factory=HeartbeatSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    shutdown_deadline_s: PositiveSeconds = 20.0
    queue_size: Annotated[int, Field(ge=1)] = 256

    @model_validator(mode="after")
    def _unique_sources(self) -> AgentConfig:
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique; repeated: {', '.join(dupes)}")
        return self


def load_agent_config(path: str | Path | None, environ: dict[str, str] | None = None) -> AgentConfig:
    """Load, validate and resolve relative paths against the config file's folder."""
    cfg = load_config(AgentConfig, path, environ)
    base = Path(path).resolve().parent if path else Path.cwd()
    return _resolve_paths(cfg, base)


def _resolve_paths(cfg: AgentConfig, base: Path) -> AgentConfig:
    def fix(p: Path | None) -> Path | None:
        return None if p is None or p.is_absolute() else base / p

    def model(m: ModelSettings) -> ModelSettings:
        return m.model_copy(update={"manifest": fix(m.manifest) or m.manifest})

    sources = []
    for s in cfg.sources:
        if isinstance(s, FolderSource):
            s = s.model_copy(update={"path": fix(s.path) or s.path, "move_to": fix(s.move_to) or s.move_to})
        sources.append(s)
    ym = cfg.yield_model
    ym = ym.model_copy(
        update={
            "model": model(ym.model) if ym.model else None,
            "weather_csv": fix(ym.weather_csv) or ym.weather_csv,
        }
    )
    keys = [str(fix(Path(k)) or k) if (base / k).exists() else k for k in cfg.trust.public_keys]
    tls = cfg.mqtt.tls
    tls = tls.model_copy(
        update={name: fix(getattr(tls, name)) or getattr(tls, name) for name in ("ca_file", "cert_file", "key_file")}
    )
    return cfg.model_copy(
        update={
            "mqtt": cfg.mqtt.model_copy(update={"tls": tls}),
            "data_dir": fix(cfg.data_dir) or cfg.data_dir,
            "models": [model(m) for m in cfg.models],
            "sources": sources,
            "yield_model": ym,
            "trust": cfg.trust.model_copy(update={"public_keys": keys}),
        }
    )
