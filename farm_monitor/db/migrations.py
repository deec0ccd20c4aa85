"""Numbered schema migrations recorded in ``schema_migrations``, so an upgrade keeps the data.

Rules for whoever changes the schema: never edit an applied migration's effect; append a new
numbered step (ALTER TABLE / CREATE INDEX / data copy) and update models.py to match. Step 1
creates the tables as models.py defines them *without* secondary indexes; once a table changes
after release, freeze its old definition inside step 1 before adding the new step. A new table
(a new message kind's, say) is one ``LATER_TABLES`` entry and a step that calls
:func:`create_tables_of_step`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, Table, inspect, select, text
from sqlalchemy.schema import CreateIndex, CreateTable

from shared.ids import utcnow

from .models import Base, SchemaMigration, table_of

logger = logging.getLogger(__name__)

# Time-series tables that become TimescaleDB hypertables, partitioned on this column.
HYPERTABLES = {"detections": "observed_at", "telemetry": "observed_at", "status_reports": "observed_at"}


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[Connection], None]


# Tables added after release by a later step; steps 1 and 2 leave them to it.
LATER_TABLES = {
    "training_runs": 4,
    "training_run_labels": 4,
    "radio_links": 5,
    "subscriptions": 6,
    "notification_deliveries": 6,
    "gateway_status": 7,
    "report_deliveries": 9,
}


def _data_tables() -> list[Table]:
    return [
        t for t in Base.metadata.sorted_tables if t.name != SchemaMigration.__tablename__ and t.name not in LATER_TABLES
    ]


def _tables_of_step(step: int) -> list[Table]:
    return [t for t in Base.metadata.sorted_tables if LATER_TABLES.get(t.name) == step]


def _m1_tables(conn: Connection) -> None:
    for table in _data_tables():
        conn.execute(CreateTable(table, if_not_exists=True))


def _m2_indexes(conn: Connection) -> None:
    # The monitor aggregates a year of data for hundreds of devices by device, field and time;
    # the partial unique index on alerts is what makes an alert fire once.
    for table in _data_tables():
        for index in sorted(table.indexes, key=lambda i: i.name or ""):
            conn.execute(CreateIndex(index, if_not_exists=True))


def _m3_timescale(conn: Connection) -> None:
    if conn.dialect.name != "postgresql":
        return
    if conn.info.get("cropwatch_timescaledb") == "off":
        return
    available = conn.execute(text("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")).first()
    if available is None:
        logger.info("timescaledb extension not available; time-series tables stay plain PostgreSQL tables")
        return
    conn.execute(text("CREATE EXTENSION IF NOT EXISTS timescaledb"))
    for table, column in HYPERTABLES.items():
        # A hypertable's unique keys must contain its time column; msg_id alone stays unique in
        # practice because a msg_id fixes its observed_at.
        pkey = inspect(conn).get_pk_constraint(table)
        cols = list(pkey["constrained_columns"])
        if column not in cols:
            conn.execute(text(f'ALTER TABLE {table} DROP CONSTRAINT "{pkey["name"]}"'))
            conn.execute(text(f"ALTER TABLE {table} ADD PRIMARY KEY ({', '.join([*cols, column])})"))
        conn.execute(
            text(f"SELECT create_hypertable('{table}', '{column}', migrate_data => true, if_not_exists => true)")
        )
        logger.info("made %s a TimescaleDB hypertable on %s", table, column)


def create_tables_of_step(conn: Connection, step: int) -> None:
    """Create the tables ``LATER_TABLES`` assigns to ``step``, with their indexes (a new table's whole step)."""
    for table in _tables_of_step(step):
        conn.execute(CreateTable(table, if_not_exists=True))
        for index in sorted(table.indexes, key=lambda i: i.name or ""):
            conn.execute(CreateIndex(index, if_not_exists=True))


def _m4_lineage(conn: Connection) -> None:
    # Retraining lineage: which run made a model version, from which data and which people's labels.
    create_tables_of_step(conn, 4)
    # Shadow scoring joins every shadowed detection to its sample's labels; a database migrated
    # from version 3 lacks this index (step 2 creates it on a new one).
    samples = Base.metadata.tables["samples"]
    for index in samples.indexes:
        if index.name == "ix_samples_detection":
            conn.execute(CreateIndex(index, if_not_exists=True))


def _m5_radio_links(conn: Connection) -> None:
    # Telemetry's radio link (RSSI, SNR, frame counter, gateway) of bridged LoRaWAN sensors.
    create_tables_of_step(conn, 5)


def _m6_notifications(conn: Connection) -> None:
    # Notification subscriptions per user and the delivery ledger whose unique key sends once.
    create_tables_of_step(conn, 6)


def add_missing_columns(conn: Connection, table: str, columns: tuple[str, ...]) -> None:
    """ALTER TABLE ADD COLUMN for each of ``columns`` (as models.py defines them) the table lacks.

    Step 1 creates a new database's tables from models.py, columns included; an older database
    gets them here, so the step is a no-op on the first and an upgrade on the second.
    """
    have = {c["name"] for c in inspect(conn).get_columns(table)}
    model = Base.metadata.tables[table]
    for name in columns:
        if name not in have:
            col_type = model.c[name].type.compile(dialect=conn.dialect)
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {col_type}"))


def _m7_gateway(conn: Connection) -> None:
    # Farm gateways' health reports (uplink state, bridge backlog, disk) for the cloud's Farms page,
    # and each label's own msg_id, so labels made on a farm reach the cloud once.
    create_tables_of_step(conn, 7)
    if "msg_id" not in {c["name"] for c in inspect(conn).get_columns("labels")}:
        conn.execute(text("ALTER TABLE labels ADD COLUMN msg_id VARCHAR(26)"))
    for index in Base.metadata.tables["labels"].indexes:
        if index.name == "ux_labels_msg_id":
            conn.execute(CreateIndex(index, if_not_exists=True))


def _m8_uplink(conn: Connection) -> None:
    # Metered uplinks: aggregated telemetry (min, mean, max, count over interval_s) and the device's
    # next expected contact, which the offline alert waits for.
    add_missing_columns(conn, "telemetry", ("value_min", "value_mean", "value_max", "value_count", "interval_s"))
    add_missing_columns(conn, "devices", ("next_contact_at",))


def _m9_report_deliveries(conn: Connection) -> None:
    # The farm report ledger: a daily or weekly report goes out once per subscriber and period.
    create_tables_of_step(conn, 9)


def _m10_detection_status(conn: Connection) -> None:
    # Abstention: `uncertain` / `not_a_leaf` detections and the model's trust score. Step 1 of a
    # new database already has the columns (it creates the table as models.py says), so each is
    # added only where missing; NULL status on older rows reads as `ok`.
    have = {c["name"] for c in inspect(conn).get_columns("detections")}
    for name, sql_type in (("status", "VARCHAR(16)"), ("trust_score", "FLOAT")):
        if name not in have:
            conn.execute(text(f"ALTER TABLE detections ADD COLUMN {name} {sql_type}"))


MIGRATIONS: list[Migration] = [
    Migration(1, "tables", _m1_tables),
    Migration(2, "monitor indexes and alert de-duplication", _m2_indexes),
    Migration(3, "timescaledb hypertables where the extension exists", _m3_timescale),
    Migration(4, "retraining lineage: training_runs and training_run_labels; samples by detection", _m4_lineage),
    Migration(5, "radio_links: telemetry's radio link metadata", _m5_radio_links),
    Migration(6, "notifications: subscriptions and the delivery ledger", _m6_notifications),
    Migration(7, "gateway_status table; labels.msg_id (labels made on a farm reach the cloud once)", _m7_gateway),
    Migration(8, "metered uplinks: aggregated telemetry columns, devices.next_contact_at", _m8_uplink),
    Migration(9, "report_deliveries: the farm report ledger", _m9_report_deliveries),
    Migration(10, "detections: abstention status and trust score", _m10_detection_status),
]
LATEST_VERSION = MIGRATIONS[-1].version


def _ensure_version_table(conn: Connection) -> None:
    conn.execute(CreateTable(table_of(SchemaMigration), if_not_exists=True))


def current_version(engine: Engine) -> int:
    with engine.connect() as conn:
        if not inspect(conn).has_table(SchemaMigration.__tablename__):
            return 0
        versions = conn.execute(select(SchemaMigration.version)).scalars().all()
        return max(versions, default=0)


def migrate(engine: Engine, target: int | None = None, timescaledb: str = "auto") -> list[int]:
    """Apply pending migrations up to ``target`` (default: latest); returns the versions applied.

    Safe to run from several processes at once: PostgreSQL takes an advisory lock, SQLite a write
    lock (BEGIN IMMEDIATE), and each step runs in the same transaction as its bookkeeping row.
    """
    target = LATEST_VERSION if target is None else target
    applied: list[int] = []
    with engine.begin() as conn:
        conn.info["cropwatch_timescaledb"] = timescaledb
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(724011)"))
        _ensure_version_table(conn)
        done = set(conn.execute(select(SchemaMigration.version)).scalars().all())
        newer = [v for v in done if v > LATEST_VERSION]
        if newer:
            raise RuntimeError(
                f"database schema is at version {max(newer)}, newer than this Cropwatch ({LATEST_VERSION}); "
                "upgrade Cropwatch instead of running an older one against it"
            )
        for migration in MIGRATIONS:
            if migration.version in done or migration.version > target:
                continue
            logger.info("applying migration %d: %s", migration.version, migration.name)
            migration.apply(conn)
            conn.execute(
                table_of(SchemaMigration)
                .insert()
                .values(version=migration.version, name=migration.name, applied_at=utcnow())
            )
            applied.append(migration.version)
        conn.info.pop("cropwatch_timescaledb", None)
    return applied
