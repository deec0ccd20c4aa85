"""Ingest of a metered device: aggregated telemetry stored with its summary, the next expected
contact kept on the device row, and no offline alert while the device sleeps until then."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import inspect, text

from farm_monitor.app import queries
from farm_monitor.config import MonitorConfig
from farm_monitor.db import make_engine, migrate
from farm_monitor.ingest.metrics import Metrics
from farm_monitor.ingest.pipeline import Ingestor
from shared import messages as m
from shared.topics import device_topic
from tests.integration.ingest_helpers import query


def _ingestor(url: str) -> Ingestor:
    cfg = MonitorConfig.model_validate({"database": {"url": url}, "retention": {"interval_s": 0}})
    engine = make_engine(cfg.database, writer=True)
    migrate(engine)
    return Ingestor(cfg, engine, Metrics())


def _feed(ing: Ingestor, *msgs: m.Envelope) -> None:
    items = [
        (device_topic(x.farm_id, x.device_id, x.kind), x.to_json(), i, 1, 0, time.monotonic())
        for i, x in enumerate(msgs)
    ]
    assert ing.process(items)


def _status(device: str, next_contact: datetime | None, at: datetime) -> m.Status:
    return m.Status(
        farm_id="f1", device_id=device, observed_at=at, state="online", since=at - timedelta(hours=1),
        agent_version="0.2.0", health=m.Health(uptime_s=3600, uplink_bytes_month=1_200_000,
                                               uplink_budget_month=5_000_000, uplink_bytes_today=41_000),
        next_contact_at=next_contact,
    )  # fmt: skip


def test_aggregated_telemetry_and_next_contact_are_stored_and_a_sleeping_device_is_not_offline(sqlite_url):
    ing = _ingestor(sqlite_url)
    now = datetime.now(UTC).replace(microsecond=0)
    agg = m.Telemetry(
        farm_id="f1", device_id="solar-1", observed_at=now, interval_s=3600.0,
        readings=[{"sensor": "soil1", "quantity": "soil_moisture", "value": 30.5, "unit": "%",
                   "min": 28.0, "mean": 29.9, "max": 31.5, "count": 12}],
    )  # fmt: skip
    _feed(ing, agg)
    assert query(
        sqlite_url, "SELECT value, value_min, value_mean, value_max, value_count, interval_s FROM telemetry"
    ) == [(30.5, 28.0, 29.9, 31.5, 12, 3600.0)]

    # Two devices silent for 2 h: one promised its next contact in 10 h (asleep), one did not.
    wake = now + timedelta(hours=10)
    _feed(ing, _status("solar-1", wake, now), _status("mains-1", None, now))
    stored = query(sqlite_url, "SELECT device_id, next_contact_at FROM devices ORDER BY device_id")
    assert stored[0] == ("mains-1", None) and stored[1][0] == "solar-1" and stored[1][1] is not None
    with ing.engine.begin() as conn:
        ing.alerts.evaluate_offline(conn, now + timedelta(hours=2))
    assert query(sqlite_url, "SELECT device_id FROM alerts WHERE rule = 'device_offline'") == [("mains-1",)]
    # The monitor's fleet table: the sleeper is asleep (not silent) with its next contact and bytes used.
    fleet = queries.devices(queries.Sql(ing.engine), "f1", now + timedelta(hours=2), 1800.0).set_index("device_id")
    assert fleet.loc["solar-1", "status"] == "asleep" and fleet.loc["mains-1", "status"] == "silent"
    assert fleet.loc["solar-1", "uplink_month"] == "1.20 / 5.0 MB (24%)"
    assert fleet.loc["solar-1", "uplink_today_kb"] == 41.0
    assert fleet.loc["solar-1", "next_contact_at"].to_pydatetime() == wake
    # Past its promise plus the rule's grace (30 min), the sleeper is offline too.
    with ing.engine.begin() as conn:
        ing.alerts.evaluate_offline(conn, wake + timedelta(minutes=31))
    rows = query(sqlite_url, "SELECT device_id FROM alerts WHERE rule = 'device_offline' ORDER BY device_id")
    assert rows == [("mains-1",), ("solar-1",)]
    ing.engine.dispose()


def test_migration_8_adds_the_uplink_columns_to_an_older_database(sqlite_url):
    engine = make_engine(sqlite_url)
    migrate(engine, target=5)
    with engine.begin() as conn:  # the columns as a database made before step 8 lacks them
        for table, col in [("telemetry", "value_min"), ("telemetry", "interval_s"), ("devices", "next_contact_at")]:
            conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {col}"))
    assert "value_min" not in {c["name"] for c in inspect(engine).get_columns("telemetry")}
    assert 8 in migrate(engine)
    assert {"value_min", "interval_s"} <= {c["name"] for c in inspect(engine).get_columns("telemetry")}
    assert "next_contact_at" in {c["name"] for c in inspect(engine).get_columns("devices")}
    engine.dispose()
