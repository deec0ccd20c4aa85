"""The agent's one config tree: ``cropwatch agent --config agent.toml``.

Every section has defaults a demo can run with; a field device sets at least ``[device]``,
``[mqtt]`` and its ``[[sources]]``. Environment overrides (``CROPWATCH_MQTT__HOST=...``) and
``password_file`` work as in :mod:`shared.config`.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, SerializeAsAny, model_validator

from shared.config import load_config
from shared.fields import Id
from shared.settings import MqttSettings

from .inference import BACKENDS, BackendSettings
from .inference.onnxruntime_backend import OnnxRuntimeSettings
from .plugins import import_plugin_modules, resolve_paths
from .sources import SOURCES, SourceSettings
from .uplink.settings import PowerSettings, UplinkSettings

STRICT = ConfigDict(extra="forbid")
PositiveSeconds = Annotated[float, Field(gt=0)]


class DeviceSettings(BaseModel):
    model_config = STRICT
    farm_id: Id
    device_id: Id
    field_id: Id | None = None
    groups: list[Id] = Field(default_factory=list, description="Rollout groups this device belongs to.")


ExpiringKind = Literal["detection", "yield", "telemetry", "sample"]


def _default_ttl() -> dict[ExpiringKind, float | None]:
    return {"telemetry": 7 * 86400.0, "sample": 7 * 86400.0, "detection": 30 * 86400.0, "yield": 30 * 86400.0}


class OutboxSettings(BaseModel):
    """The on-disk queue between results and the broker; see docs/edge-agent.md for the policy."""

    model_config = STRICT
    budget_mb: Annotated[float, Field(gt=0)] = 200.0
    # Per kind; None keeps messages until they are delivered. Events (alerts) never expire.
    ttl_s: dict[ExpiringKind, PositiveSeconds | None] = Field(default_factory=_default_ttl)
    max_inflight: Annotated[int, Field(ge=1, le=1000)] = 64
    # PUBACK 0x10 (the broker had no subscriber and dropped it): keep the row and send it again.
    # false only where publishing with nobody subscribed is normal and the message may be lost.
    retry_no_subscribers: bool = True
    # Keep an acknowledged message this long and send it again after any reconnect: Mosquitto saves
    # its queues every autosave_interval (60 s in deploy/), and a broker crash forgets what it
    # acknowledged since. Longer than the broker's save interval; 0 where the broker syncs first.
    hold_acked_s: Annotated[float, Field(ge=0, le=3600)] = 75.0


ModelEntry = Annotated[SerializeAsAny[BackendSettings], BeforeValidator(BACKENDS.validate)]
SourceEntry = Annotated[SerializeAsAny[SourceSettings], BeforeValidator(SOURCES.validate)]
# The default backend's settings: what a ``[[models]]`` table without ``type`` becomes, and what
# code that makes a model entry for a manifest builds.
ModelSettings = OnnxRuntimeSettings


class PluginModules(BaseModel):
    """Plugins from outside the project (docs/edge-agent.md "Plugins")."""

    model_config = STRICT
    modules: list[str] = Field(
        default_factory=list,
        description="Python modules imported before the rest of the config is read; each registers backends, "
        "sources or sensor readers.",
    )


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
    # An update that failed for a passing reason (a full disk, a write error, the registry out of
    # reach) is tried again from the same message after this pause, doubled each time up to retry_max_s.
    retry_s: PositiveSeconds = 5.0
    retry_max_s: PositiveSeconds = 300.0


class SampleSettings(BaseModel):
    """Low-confidence images sent for labelling."""

    model_config = STRICT
    enabled: bool = True
    confidence_below: Annotated[float, Field(ge=0, le=1)] = 0.6
    max_per_hour: Annotated[int, Field(ge=0)] = 10
    max_per_day: Annotated[int, Field(ge=0)] = 50
    max_side: Annotated[int, Field(ge=32, le=4096)] = 640
    # Share of each cap only `uncertain` images may use (they go to labelling ahead of the rest).
    uncertain_reserve: Annotated[float, Field(ge=0, lt=1)] = 0.3


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
    model: ModelEntry | None = None
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


class DebugSettings(BaseModel):
    """Test aids, off by default; not for production devices."""

    model_config = STRICT
    # One line per message created or dropped (edge_agent/ledger.py), read by bench/chaos.py.
    ledger_path: Path | None = None


class AgentConfig(BaseModel):
    model_config = STRICT
    device: DeviceSettings
    data_dir: Path = Path("/var/lib/cropwatch")
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    trust: TrustSettings = Field(default_factory=TrustSettings)
    plugins: PluginModules = Field(default_factory=PluginModules)
    models: list[ModelEntry] = Field(default_factory=list, max_length=4)
    sources: list[SourceEntry] = Field(default_factory=list)
    samples: SampleSettings = Field(default_factory=SampleSettings)
    updates: UpdateSettings = Field(default_factory=UpdateSettings)
    yield_model: YieldSettings = Field(default_factory=YieldSettings, alias="yield")
    heartbeat: HeartbeatSettings = Field(default_factory=HeartbeatSettings)
    # One [uplink] section: the wire encoding (shared.wire) and the metered-link settings extending it.
    uplink: UplinkSettings = Field(default_factory=UplinkSettings)
    power: PowerSettings = Field(default_factory=PowerSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    debug: DebugSettings = Field(default_factory=DebugSettings)
    shutdown_deadline_s: PositiveSeconds = 20.0
    queue_size: Annotated[int, Field(ge=1)] = 256

    @model_validator(mode="before")
    @classmethod
    def _import_plugins(cls, data: Any) -> Any:
        # Before the fields: the modules register the backends, sources and readers those name.
        if isinstance(data, dict) and isinstance(data.get("plugins"), dict):
            modules = data["plugins"].get("modules")
            if isinstance(modules, list):
                import_plugin_modules([m for m in modules if isinstance(m, str)])
        return data

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

    ym = cfg.yield_model
    ym = ym.model_copy(
        update={
            "model": resolve_paths(ym.model, base) if ym.model else None,
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
            "models": [resolve_paths(m, base) for m in cfg.models],
            "sources": [resolve_paths(s, base) for s in cfg.sources],
            "yield_model": ym,
            "trust": cfg.trust.model_copy(update={"public_keys": keys}),
            "debug": cfg.debug.model_copy(update={"ledger_path": fix(cfg.debug.ledger_path) or cfg.debug.ledger_path}),
        }
    )
