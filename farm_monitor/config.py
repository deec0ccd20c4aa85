"""The one config tree of the monitor side (ingest service and ``cropwatch db``).

Loaded with :func:`shared.config.load_config`: ``monitor.toml``, then ``CROPWATCH_*`` environment
overrides (``CROPWATCH_DATABASE__URL=postgresql+psycopg://...``), then ``*_file`` secrets.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from shared.ids import ID_RE
from shared.sensor_health import HEALTH_STATES, HealthState
from shared.settings import MqttSettings

from .db.engine import DatabaseSettings
from .db.retention import RetentionSettings


class IngestSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    shared_group: str | None = Field(
        "ingest",
        description="MQTT v5 shared subscription group: N ingest processes with the same group split the load. "
        "Empty for a plain subscription.",
    )
    topic_filter: str = "cropwatch/v1/+/+/+"
    client_id: str | None = Field(
        None,
        description="Stable across restarts (the broker keeps the session under it) and distinct per process; "
        "default cropwatch-ingest-HOSTNAME. mqtt.client_id, when set, wins.",
    )
    batch_max_messages: Annotated[int, Field(ge=1, le=50_000)] = 2000
    batch_max_s: Annotated[float, Field(gt=0, le=60)] = 0.25
    receive_maximum: Annotated[int, Field(ge=1, le=65535)] = Field(
        8000,
        description="MQTT v5 Receive Maximum: unacknowledged messages the broker may have in flight to us.",
    )
    dead_letter_max_bytes: Annotated[int, Field(ge=0)] = Field(4096, description="Raw bytes kept per dead letter.")
    dead_letter_log_interval_s: Annotated[float, Field(ge=0)] = Field(
        10.0, description="At most one log line per reason per interval; counters count every one."
    )
    retry_min_s: Annotated[float, Field(gt=0)] = 0.5
    retry_max_s: Annotated[float, Field(gt=0)] = 30.0

    @field_validator("shared_group")
    @classmethod
    def _group_is_id(cls, value: str | None) -> str | None:
        if value == "":
            return None
        if value is not None and not ID_RE.fullmatch(value):
            raise ValueError("shared_group must match [a-z0-9][a-z0-9_-]{0,63}")
        return value


class DiseaseRule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    window_hours: Annotated[float, Field(gt=0)] = 24.0
    percent: Annotated[float, Field(gt=0, le=100)] = 30.0
    min_detections: Annotated[int, Field(ge=1)] = 10
    healthy_pattern: str = Field("healthy", description="Labels containing this (case-insensitive) are not disease.")
    severity: Literal["info", "warning", "critical"] = "warning"


class OfflineRule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    after_s: Annotated[float, Field(gt=0)] = 1800.0
    severity: Literal["info", "warning", "critical"] = "critical"


class BacklogRule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    older_than_s: Annotated[float, Field(gt=0)] = 3600.0
    severity: Literal["info", "warning", "critical"] = "warning"


class SensorHealthRule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    states: list[HealthState] = Field(
        default_factory=lambda: list(HEALTH_STATES),
        description="Which telemetry sensor_health flags raise an alert.",
    )
    severity: Literal["info", "warning", "critical"] = "warning"


class AlertSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    evaluate_every_s: Annotated[float, Field(gt=0)] = Field(
        30.0, description="Disease and offline rules run at most this often (and after batches with detections)."
    )
    disease: DiseaseRule = Field(default_factory=DiseaseRule)
    device_offline: OfflineRule = Field(default_factory=OfflineRule)
    outbox_backlog: BacklogRule = Field(default_factory=BacklogRule)
    sensor_health: SensorHealthRule = Field(default_factory=SensorHealthRule)


class MetricsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = Field(9464, description="0 turns the HTTP endpoint off.")
    stale_after_s: Annotated[float, Field(gt=0)] = Field(
        60.0, description="/healthz fails when messages wait uncommitted longer than this."
    )


class SmtpSettings(BaseModel):
    """``[report.smtp]``: the mail server farm reports go through (stdlib smtplib)."""

    model_config = ConfigDict(extra="forbid")
    host: str = "localhost"
    port: Annotated[int, Field(ge=1, le=65535)] = 587
    starttls: bool = Field(True, description="Upgrade the connection with STARTTLS before logging in.")
    ssl: bool = Field(False, description="Implicit TLS from the first byte (port 465); excludes starttls.")
    user: str | None = Field(None, description="Log in as this user; unset: send without logging in.")
    password: SecretStr | None = Field(None, description="Or password_file (systemd credentials, Docker secrets).")
    ca_file: str | None = Field(None, description="CA certificate of the server; default: the system's.")
    timeout_s: Annotated[float, Field(gt=0, le=600)] = 60.0


class ReportSettings(BaseModel):
    """``[report]``: daily and weekly farm reports by email (``cropwatch report``; docs/reports.md)."""

    model_config = ConfigDict(extra="forbid")
    from_addr: str = Field("cropwatch@localhost", description="The From: of report mails.")
    monitor_url: str = Field(
        "http://localhost:8501", description="The monitor's address as readers reach it: the link in each report."
    )
    send_after_hour: Annotated[int, Field(ge=0, le=23)] = Field(
        6, description="A period's report goes out from this hour (subscriber's time zone) of the day after it."
    )
    max_attempts: Annotated[int, Field(ge=1, le=100)] = Field(
        5, description="Tries per report (one per delivery tick) before it is recorded dead."
    )
    claim_timeout_s: Annotated[float, Field(gt=0)] = Field(
        3600.0, description="A claim left by a process that died mid-send is taken over after this long."
    )
    deliver_every_s: Annotated[float, Field(ge=0)] = Field(
        300.0, description="How often `cropwatch notify` sends the reports that are due; 0: only --deliver-due does."
    )
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)


class AppSettings(BaseModel):
    """``[app]``: the Streamlit farm monitor (``cropwatch monitor``)."""

    model_config = ConfigDict(extra="forbid")
    users_file: str = Field(
        "var/monitor-users.json", description="Users and argon2 password hashes; managed with 'cropwatch users'."
    )
    farm_file: str = Field(
        "var/farm.geojson", description="Farm layout: GeoJSON fields (crop, planting date) and device locations."
    )
    registry: str | None = Field(None, description="Model registry folder shown on the Models page.")
    rollout_broker: str | None = Field(
        None,
        description="Broker URL (mqtt[s]://user@host:port) for Publish/Roll back on the Models page: the same "
        "code as `cropwatch models publish|rollback` sends the retained desired-model message with these "
        "credentials (the cropwatch-ops user). Unset: the page shows the rollout but cannot change it.",
    )
    rollout_broker_password: SecretStr | None = Field(None, description="Or rollout_broker_password_file.")
    rollout_ca_file: str | None = Field(None, description="CA certificate for an mqtts:// rollout broker.")
    rollout_base_url: str | None = Field(
        None, description="Registry URL that devices download from (what `cropwatch registry serve` serves)."
    )
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8501
    cache_ttl_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        30.0, description="Query results are reused this long; live data is at most this old."
    )
    refresh_s: Annotated[float, Field(ge=5, le=3600)] = Field(30.0, description="Overview live refresh interval.")
    risk_window_hours: Annotated[float, Field(gt=0)] = Field(
        72.0, description="Field disease risk = share of disease detections over this window."
    )
    gallery_size: Annotated[int, Field(ge=1, le=200)] = 24


class NotifySettings(BaseModel):
    """``[notify]``: the notification service (``cropwatch notify``); see docs/notifications.md."""

    model_config = ConfigDict(extra="forbid")
    poll_interval_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        10.0, description="How often new, escalated and resolved alerts are looked for."
    )
    monitor_url: str = Field(
        "http://localhost:8501", description="The monitor's address as people reach it: links in notifications."
    )
    ack_secret: SecretStr | None = Field(
        None,
        description="Signs the acknowledge links (or ack_secret_file; at least 16 characters). The monitor needs "
        "the same value to check them. Unset: notifications carry no acknowledge link.",
    )
    ack_link_ttl_h: Annotated[float, Field(gt=0, le=24 * 30)] = Field(72.0, description="An acknowledge link expires.")
    escalate_after_min: Annotated[float, Field(ge=0)] = Field(
        120.0,
        description="An open alert unacknowledged this long is sent again as escalated, one severity higher "
        "(a critical-only subscriber then gets warnings nobody took). 0 turns escalation off.",
    )
    rate_cap_per_hour: Annotated[int, Field(ge=1, le=10_000)] = Field(
        12, description="Messages per subscription channel per rolling hour; the rest wait for one digest."
    )
    max_attempts: Annotated[int, Field(ge=1, le=100)] = Field(
        6, description="Tries per message before it is recorded dead (shown on the Notifications page)."
    )
    retry_base_s: Annotated[float, Field(gt=0)] = Field(30.0, description="First retry delay; doubles per attempt.")
    retry_max_s: Annotated[float, Field(gt=0)] = 1800.0
    lease_s: Annotated[float, Field(gt=0)] = Field(
        120.0,
        description="A message claimed by a notify process that died is taken over by another after this long.",
    )
    lookback_h: Annotated[float, Field(gt=0)] = Field(
        24.0, description="Alerts raised or resolved longer ago than this are never notified (a first start is quiet)."
    )
    channels_dir: str | None = Field(
        None,
        description="Folder of secret channel files: a channel written secret:NAME is the Apprise URL in "
        "channels_dir/NAME, else in the environment variable CROPWATCH_CHANNEL_NAME.",
    )
    telegram_api_url: str | None = Field(
        None, description="A self-hosted Telegram Bot API server (default https://api.telegram.org)."
    )
    thumbnail_px: Annotated[int, Field(ge=32, le=2048)] = 320

    @field_validator("ack_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("ack_secret needs at least 16 characters (e.g. openssl rand -hex 32)")
        return value


class MonitorConfig(BaseModel):
    """``monitor.toml``."""

    model_config = ConfigDict(extra="forbid")
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    report: ReportSettings = Field(default_factory=ReportSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    app: AppSettings = Field(default_factory=AppSettings)
    notify: NotifySettings = Field(default_factory=NotifySettings)
    log_level: Literal["debug", "info", "warning", "error"] = "info"


def command_config(path: str | None, prog: str, check_config: bool = False) -> MonitorConfig | int:
    """monitor.toml for a command, or its exit code: 2 after saying what is wrong, 0 after
    ``--check-config`` printed it with secrets redacted."""
    from shared.config import command_config as load_for_command

    return load_for_command(MonitorConfig, path, prog, check_config)
