"""The monitor database, as SQLAlchemy 2 declarative models (the current schema).

Times are UTC. PostgreSQL stores ``timestamptz``; SQLite stores naive UTC text in SQLAlchemy's
format, so both read back through these models the same way. Rows that come from a device
message are keyed on its ``msg_id``, which makes every write idempotent. docs/database.md
describes each table for the monitor pages and the rollout feature.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import BYTEA, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

Json = JSON().with_variant(JSONB(), "postgresql")
Blob = LargeBinary().with_variant(BYTEA(), "postgresql")
Ts = DateTime(timezone=True)
MsgIdCol = String(26)
IdCol = String(64)
AutoId = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements only INTEGER PRIMARY KEY


class Base(DeclarativeBase):
    pass


class MessageHeader:
    """The columns every device message table starts with (the contract's envelope plus arrival time).

    ``sort_order`` keeps them first, in this order, as the tables were created before the mixin:
    declarative puts a mixin's columns after the class's own otherwise.
    """

    msg_id: Mapped[str] = mapped_column(MsgIdCol, primary_key=True, sort_order=-10)
    farm_id: Mapped[str] = mapped_column(IdCol, sort_order=-8)
    device_id: Mapped[str] = mapped_column(IdCol, sort_order=-7)
    observed_at: Mapped[datetime] = mapped_column(Ts, sort_order=-5)
    received_at: Mapped[datetime] = mapped_column(Ts, sort_order=-4)


class FieldMessageHeader(MessageHeader):
    """The header of messages that can name a field (all but status and event)."""

    field_id: Mapped[str | None] = mapped_column(IdCol, sort_order=-6)


class SchemaMigration(Base):
    __tablename__ = "schema_migrations"
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    applied_at: Mapped[datetime] = mapped_column(Ts)


class Device(Base):
    """One row per device: the latest status, kept current by ingest."""

    __tablename__ = "devices"
    farm_id: Mapped[str] = mapped_column(IdCol, primary_key=True)
    device_id: Mapped[str] = mapped_column(IdCol, primary_key=True)
    state: Mapped[str | None] = mapped_column(String(16))  # online | offline | None before any status
    state_since: Mapped[datetime | None] = mapped_column(Ts)
    status_observed_at: Mapped[datetime | None] = mapped_column(Ts)
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(Ts)
    last_seen_at: Mapped[datetime | None] = mapped_column(Ts)
    first_seen_at: Mapped[datetime | None] = mapped_column(Ts)
    agent_version: Mapped[str | None] = mapped_column(String(64))
    models: Mapped[Any | None] = mapped_column(Json)
    health: Mapped[Any | None] = mapped_column(Json)
    reason: Mapped[str | None] = mapped_column(String(256))
    # A device on a metered or windowed uplink says when it will be heard from next (migration 8).
    next_contact_at: Mapped[datetime | None] = mapped_column(Ts)


class StatusReport(MessageHeader, Base):
    """Every status message (heartbeat history); short retention."""

    __tablename__ = "status_reports"
    state: Mapped[str] = mapped_column(String(16))
    since: Mapped[datetime] = mapped_column(Ts)
    agent_version: Mapped[str] = mapped_column(String(64))
    models: Mapped[Any | None] = mapped_column(Json)
    health: Mapped[Any | None] = mapped_column(Json)
    reason: Mapped[str | None] = mapped_column(String(256))

    __table_args__ = (Index("ix_status_reports_device_time", "farm_id", "device_id", "observed_at"),)


class GatewayStatusRow(MessageHeader, Base):
    """Every health report of a farm gateway (``gateway_status``); ``device_id`` is the gateway's id."""

    __tablename__ = "gateway_status"
    bridge: Mapped[str] = mapped_column(IdCol)
    uplink: Mapped[str] = mapped_column(String(16))
    uplink_since: Mapped[datetime | None] = mapped_column(Ts)
    backlog_since: Mapped[datetime | None] = mapped_column(Ts)
    queued_bytes: Mapped[int | None] = mapped_column(BigInteger)
    queued_messages: Mapped[int | None] = mapped_column(BigInteger)
    disk_free_bytes: Mapped[int | None] = mapped_column(BigInteger)
    disk_total_bytes: Mapped[int | None] = mapped_column(BigInteger)
    gateway_version: Mapped[str] = mapped_column(String(64))

    __table_args__ = (Index("ix_gateway_status_farm_time", "farm_id", "observed_at"),)


class Detection(FieldMessageHeader, Base):
    __tablename__ = "detections"
    model_name: Mapped[str] = mapped_column(IdCol)
    model_version: Mapped[str] = mapped_column(String(64))
    model_sha256: Mapped[str] = mapped_column(String(64))
    model_variant: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(IdCol)
    image_ref: Mapped[str] = mapped_column(String(512))
    image_sha256: Mapped[str | None] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(128))
    confidence: Mapped[float] = mapped_column(Float)
    top_k: Mapped[Any] = mapped_column(Json)
    inference_ms: Mapped[float | None] = mapped_column(Float)
    shadow: Mapped[Any | None] = mapped_column(Json)
    # ok | uncertain | not_a_leaf; NULL (rows from before migration 10) means ok.
    status: Mapped[str | None] = mapped_column(String(16))
    trust_score: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (
        Index("ix_detections_device_time", "farm_id", "device_id", "observed_at"),
        Index("ix_detections_field_time", "field_id", "observed_at"),
    )


class YieldEstimate(FieldMessageHeader, Base):
    __tablename__ = "yield_estimates"
    model_name: Mapped[str] = mapped_column(IdCol)
    model_version: Mapped[str] = mapped_column(String(64))
    model_sha256: Mapped[str] = mapped_column(String(64))
    crop: Mapped[str | None] = mapped_column(IdCol)
    season_start: Mapped[date] = mapped_column(Date)
    days_into_season: Mapped[int] = mapped_column(Integer)
    season_progress: Mapped[float] = mapped_column(Float)
    expected: Mapped[float] = mapped_column(Float)
    p10: Mapped[float] = mapped_column(Float)
    p50: Mapped[float] = mapped_column(Float)
    p90: Mapped[float] = mapped_column(Float)
    unit: Mapped[str] = mapped_column(String(32))

    __table_args__ = (
        Index("ix_yield_device_time", "farm_id", "device_id", "observed_at"),
        Index("ix_yield_field_time", "field_id", "observed_at"),
    )


class TelemetryReading(FieldMessageHeader, Base):
    """One row per sensor reading; a telemetry message with 4 readings makes 4 rows."""

    __tablename__ = "telemetry"
    # Second in the key, right after msg_id (the header's sort_order puts msg_id at -10).
    reading_index: Mapped[int] = mapped_column(Integer, primary_key=True, sort_order=-9)
    sensor: Mapped[str] = mapped_column(IdCol)
    quantity: Mapped[str] = mapped_column(String(32))
    value: Mapped[float] = mapped_column(Float)
    unit: Mapped[str] = mapped_column(String(16))
    # Aggregated telemetry (a metered link, migration 8): value is the interval's last reading.
    value_min: Mapped[float | None] = mapped_column(Float)
    value_mean: Mapped[float | None] = mapped_column(Float)
    value_max: Mapped[float | None] = mapped_column(Float)
    value_count: Mapped[int | None] = mapped_column(Integer)
    interval_s: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (
        Index("ix_telemetry_device_time", "farm_id", "device_id", "observed_at"),
        Index("ix_telemetry_field_quantity_time", "field_id", "quantity", "observed_at"),
    )


class RadioLinkRow(MessageHeader, Base):
    """How a radio sensor's telemetry message arrived (``Telemetry.link``): one row per message that has one.

    A table of its own rather than columns of ``telemetry``: a link belongs to the message, not to
    each of its readings, and most devices (wired sensors) never send one.
    """

    __tablename__ = "radio_links"
    rssi_dbm: Mapped[float | None] = mapped_column(Float)
    snr_db: Mapped[float | None] = mapped_column(Float)
    frame_counter: Mapped[int | None] = mapped_column(BigInteger)  # LoRaWAN's is 32 bits, unsigned
    gateway_id: Mapped[str | None] = mapped_column(IdCol)
    gateways: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (Index("ix_radio_links_device_time", "farm_id", "device_id", "observed_at"),)


class SampleRow(FieldMessageHeader, Base):
    """An image sent for labelling, with its JPEG bytes."""

    __tablename__ = "samples"
    reason: Mapped[str] = mapped_column(String(32))
    model_name: Mapped[str | None] = mapped_column(IdCol)
    model_version: Mapped[str | None] = mapped_column(String(64))
    detection_msg_id: Mapped[str | None] = mapped_column(MsgIdCol)
    source: Mapped[str | None] = mapped_column(IdCol)
    image_ref: Mapped[str | None] = mapped_column(String(512))
    predicted_label: Mapped[str | None] = mapped_column(String(128))
    confidence: Mapped[float | None] = mapped_column(Float)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    image_size: Mapped[int] = mapped_column(Integer)
    image_jpeg: Mapped[bytes] = mapped_column(Blob)

    __table_args__ = (
        Index("ix_samples_device_time", "farm_id", "device_id", "observed_at"),
        Index("ix_samples_field_time", "field_id", "observed_at"),
        # Shadow scoring and lineage go from a detection to the labels of its sample.
        Index("ix_samples_detection", "detection_msg_id"),
    )


class LabelRow(Base):
    """A person's label for a sample (the monitor's labelling queue writes these)."""

    __tablename__ = "labels"
    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    sample_msg_id: Mapped[str] = mapped_column(MsgIdCol, ForeignKey("samples.msg_id", ondelete="CASCADE"))
    label: Mapped[str] = mapped_column(String(128))
    labelled_by: Mapped[str] = mapped_column(String(128))
    labelled_at: Mapped[datetime] = mapped_column(Ts)
    note: Mapped[str | None] = mapped_column(Text)
    # The label's own msg_id (a ULID, given by the monitor): a farm gateway sends it up as a
    # ``label`` message and the cloud stores it once. Null on labels made before migration 7.
    msg_id: Mapped[str | None] = mapped_column(MsgIdCol)

    __table_args__ = (
        Index("ix_labels_sample", "sample_msg_id"),
        Index("ux_labels_msg_id", "msg_id", unique=True),
    )


class ModelRow(Base):
    """A model version known to the monitor (the rollout feature registers these)."""

    __tablename__ = "models"
    name: Mapped[str] = mapped_column(IdCol, primary_key=True)
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    task: Mapped[str | None] = mapped_column(String(64))
    sha256: Mapped[str | None] = mapped_column(String(64))
    manifest: Mapped[Any | None] = mapped_column(Json)
    created_at: Mapped[datetime | None] = mapped_column(Ts)
    registered_at: Mapped[datetime] = mapped_column(Ts)


class DeviceModel(Base):
    """Per device and model name: what rollout wants (desired_*) and what the device reports (active_*)."""

    __tablename__ = "device_models"
    farm_id: Mapped[str] = mapped_column(IdCol, primary_key=True)
    device_id: Mapped[str] = mapped_column(IdCol, primary_key=True)
    model_name: Mapped[str] = mapped_column(IdCol, primary_key=True)
    role: Mapped[str] = mapped_column(String(16), primary_key=True, server_default="champion")
    desired_version: Mapped[str | None] = mapped_column(String(64))
    desired_at: Mapped[datetime | None] = mapped_column(Ts)
    desired_by: Mapped[str | None] = mapped_column(String(128))
    active_version: Mapped[str | None] = mapped_column(String(64))
    active_sha256: Mapped[str | None] = mapped_column(String(64))
    active_variant: Mapped[str | None] = mapped_column(String(16))
    state: Mapped[str | None] = mapped_column(String(16))
    state_since: Mapped[datetime | None] = mapped_column(Ts)
    reported_at: Mapped[datetime | None] = mapped_column(Ts)


class EventRow(MessageHeader, Base):
    __tablename__ = "events"
    level: Mapped[str] = mapped_column(String(16))
    code: Mapped[str] = mapped_column(IdCol)
    message: Mapped[str] = mapped_column(Text)
    details: Mapped[Any | None] = mapped_column(Json)

    __table_args__ = (Index("ix_events_device_time", "farm_id", "device_id", "observed_at"),)


class Alert(Base):
    """An alert raised once per episode (``dedup_key`` is unique among unresolved alerts)."""

    __tablename__ = "alerts"
    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    rule: Mapped[str] = mapped_column(String(32))
    dedup_key: Mapped[str] = mapped_column(String(300))
    severity: Mapped[str] = mapped_column(String(16))
    farm_id: Mapped[str] = mapped_column(IdCol)
    device_id: Mapped[str | None] = mapped_column(IdCol)
    field_id: Mapped[str | None] = mapped_column(IdCol)
    message: Mapped[str] = mapped_column(Text)
    details: Mapped[Any | None] = mapped_column(Json)
    raised_at: Mapped[datetime] = mapped_column(Ts)
    resolved_at: Mapped[datetime | None] = mapped_column(Ts)
    acknowledged_at: Mapped[datetime | None] = mapped_column(Ts)
    acknowledged_by: Mapped[str | None] = mapped_column(String(128))

    __table_args__ = (
        Index(
            "ux_alerts_open",
            "dedup_key",
            unique=True,
            sqlite_where=text("resolved_at IS NULL"),
            postgresql_where=text("resolved_at IS NULL"),
        ),
        Index("ix_alerts_farm_time", "farm_id", "raised_at"),
    )


class DeadLetter(Base):
    """A payload that could not be stored, with why; ``digest`` makes a redelivered one a no-op."""

    __tablename__ = "dead_letters"
    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    received_at: Mapped[datetime] = mapped_column(Ts)
    topic: Mapped[str] = mapped_column(Text)
    farm_id: Mapped[str | None] = mapped_column(String(64))
    device_id: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text)
    payload_size: Mapped[int] = mapped_column(Integer)
    payload: Mapped[bytes] = mapped_column(Blob)

    __table_args__ = (Index("ix_dead_letters_reason_time", "reason", "received_at"),)


class TrainingRun(Base):
    """A retraining run (``cropwatch retrain disease``): its model version, data and gate result."""

    __tablename__ = "training_runs"
    run_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    model_name: Mapped[str] = mapped_column(IdCol)
    model_version: Mapped[str] = mapped_column(String(64))
    base_model_version: Mapped[str | None] = mapped_column(String(64))
    # Paths: Text, not a length a deep run folder can exceed (PostgreSQL refuses, SQLite does not check).
    base_run: Mapped[str] = mapped_column(Text)
    run_dir: Mapped[str] = mapped_column(Text)
    # None for a run that stopped before training (status error).
    dataset_fingerprint: Mapped[str | None] = mapped_column(String(80))
    base_dataset_fingerprint: Mapped[str | None] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(Ts)
    # The newest label the run saw: "new labels since the last run" counts from here.
    labels_until: Mapped[datetime | None] = mapped_column(Ts)
    gate_passed: Mapped[bool] = mapped_column(Boolean)
    gate: Mapped[Any | None] = mapped_column(Json)
    counts: Mapped[Any | None] = mapped_column(Json)
    status: Mapped[str] = mapped_column(String(16))  # error | gate_failed | candidate | shadow | promoted | superseded
    status_at: Mapped[datetime] = mapped_column(Ts)
    status_reason: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_training_runs_model_time", "model_name", "created_at"),
        Index("ix_training_runs_version", "model_name", "model_version"),
    )


class TrainingRunLabel(Base):
    """One labelled field sample a retraining run used, as it was labelled then (who, what, when)."""

    __tablename__ = "training_run_labels"
    run_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("training_runs.run_id", ondelete="CASCADE"), primary_key=True
    )
    sample_msg_id: Mapped[str] = mapped_column(MsgIdCol, primary_key=True)
    label: Mapped[str] = mapped_column(String(128))
    labelled_by: Mapped[str] = mapped_column(String(128))
    labelled_at: Mapped[datetime] = mapped_column(Ts)
    image_sha256: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))  # train | val | field_test | duplicate | unknown_class

    __table_args__ = (Index("ix_training_run_labels_sample", "sample_msg_id"),)


class ReportDelivery(Base):
    """The farm report ledger: one row per subscriber, farm, frequency and period (``cropwatch report``).

    The unique key is what makes a daily or weekly report go out once per period, however many
    processes run the delivery tick; ``status`` is ``sending`` while a process holds the claim.
    """

    __tablename__ = "report_deliveries"
    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(128))
    farm_id: Mapped[str] = mapped_column(IdCol)  # "*" for a report of every farm the user sees
    frequency: Mapped[str] = mapped_column(String(16))  # daily | weekly
    period_key: Mapped[str] = mapped_column(String(32))  # 2026-12-02 | 2026-W48, in the subscriber's time zone
    period_start: Mapped[datetime] = mapped_column(Ts)
    period_end: Mapped[datetime] = mapped_column(Ts)
    to_addr: Mapped[str] = mapped_column(String(320))
    status: Mapped[str] = mapped_column(String(16))  # sending | sent | failed | dead
    attempts: Mapped[int] = mapped_column(Integer)
    claimed_at: Mapped[datetime] = mapped_column(Ts)
    sent_at: Mapped[datetime | None] = mapped_column(Ts)
    message_id: Mapped[str | None] = mapped_column(String(256))
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ux_report_deliveries_period", "username", "farm_id", "frequency", "period_key", unique=True),
    )


class Subscription(Base):
    """Who gets which alerts on which channels (the monitor's Notifications page edits these).

    ``farms``/``fields``/``kinds`` are JSON lists, empty meaning all (farms: all the user may see).
    ``channels`` are Apprise URLs or ``secret:NAME`` references (docs/notifications.md); the pages and
    logs show them redacted. Quiet hours are local times in ``timezone`` (IANA name).
    """

    __tablename__ = "subscriptions"
    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(128))
    enabled: Mapped[bool] = mapped_column(Boolean)
    farms: Mapped[Any] = mapped_column(Json)
    fields: Mapped[Any] = mapped_column(Json)
    kinds: Mapped[Any] = mapped_column(Json)
    min_severity: Mapped[str] = mapped_column(String(16))
    channels: Mapped[Any] = mapped_column(Json)
    timezone: Mapped[str] = mapped_column(String(64))
    quiet_start: Mapped[str | None] = mapped_column(String(5))  # "22:00"
    quiet_end: Mapped[str | None] = mapped_column(String(5))
    critical_overrides_quiet: Mapped[bool] = mapped_column(Boolean)
    report_frequency: Mapped[str] = mapped_column(String(8))  # off | daily | weekly (the farm report)
    created_at: Mapped[datetime] = mapped_column(Ts)
    updated_at: Mapped[datetime] = mapped_column(Ts)

    __table_args__ = (Index("ix_subscriptions_user", "username"),)


class NotificationDelivery(Base):
    """The delivery ledger: one row per alert episode, subscription, channel and event, never two.

    The unique key is what makes a notification go out once across restarts and several notify
    processes; ``state`` walks pending -> sending (claimed until ``claimed_until``) -> sent, or to
    held (rate cap) -> digesting -> digested, or to dead after the last retry.
    """

    __tablename__ = "notification_deliveries"
    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    alert_id: Mapped[int] = mapped_column(AutoId, ForeignKey("alerts.id", ondelete="CASCADE"))
    subscription_id: Mapped[int] = mapped_column(AutoId, ForeignKey("subscriptions.id", ondelete="CASCADE"))
    channel_key: Mapped[str] = mapped_column(String(16))  # sha256 of the channel URL/reference, 16 hex digits
    event: Mapped[str] = mapped_column(String(16))  # raised | escalated | resolved
    username: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(Ts)
    next_attempt_at: Mapped[datetime] = mapped_column(Ts)
    claimed_by: Mapped[str | None] = mapped_column(String(128))  # the claimer; on a sent row, the sender
    claimed_until: Mapped[datetime | None] = mapped_column(Ts)
    sent_at: Mapped[datetime | None] = mapped_column(Ts)
    last_error: Mapped[str | None] = mapped_column(Text)
    ack_used_at: Mapped[datetime | None] = mapped_column(Ts)

    __table_args__ = (
        Index("ux_deliveries_once", "alert_id", "subscription_id", "channel_key", "event", unique=True),
        Index("ix_deliveries_state_due", "state", "next_attempt_at"),
        Index("ix_deliveries_sub_sent", "subscription_id", "channel_key", "sent_at"),
    )


TABLES = Base.metadata.tables


def message_tables() -> list[Table]:
    """The device message tables (those with the :class:`MessageHeader` columns), in definition order."""
    headed = {mp.class_.__tablename__ for mp in Base.registry.mappers if MessageHeader in mp.class_.__mro__}
    return [t for name, t in TABLES.items() if name in headed]


def table_of(model: type[Base]) -> Table:
    """The ``Table`` an ORM class maps (typed, unlike ``__table__``)."""
    return TABLES[model.__tablename__]
