"""The sensor_health alert rule in ingest, on SQLite and PostgreSQL: raised per device, channel and
state from telemetry flags, resolved by a later message carrying the channel's reading unflagged."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from farm_monitor.config import MonitorConfig
from farm_monitor.db import make_engine, migrate
from farm_monitor.ingest.metrics import Metrics
from farm_monitor.ingest.pipeline import Ingestor
from shared import messages as m
from shared.quantities import CANONICAL_UNITS
from shared.topics import device_topic
from tests.integration.ingest_helpers import query

T0 = datetime(2026, 6, 1, 12, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")


def _ingestor(url: str, **rule: object) -> Ingestor:
    cfg = MonitorConfig.model_validate({"database": {"url": url}, "alerts": {"sensor_health": rule}})
    engine = make_engine(cfg.database, writer=True)
    migrate(engine)
    return Ingestor(cfg, engine, Metrics())


def _feed(ing: Ingestor, *msgs: m.Envelope) -> None:
    items = [
        (device_topic(x.farm_id, x.device_id, x.kind), x.to_json(), i, 1, 0, time.monotonic())
        for i, x in enumerate(msgs)
    ]
    assert ing.process(items)


def _telemetry(minute: int, readings: dict[str, float], flags: dict[str, str] | None = None) -> m.Telemetry:
    return m.Telemetry(
        farm_id="f1",
        device_id="gw-01",
        field_id="north",
        observed_at=T0 + timedelta(minutes=minute),
        readings=[
            m.SensorReading(sensor="soil-a", quantity=q, value=v, unit=CANONICAL_UNITS[q])  # type: ignore[arg-type,index]
            for q, v in readings.items()
        ],
        sensor_health=[
            m.SensorHealth(sensor="soil-a", quantity=q, state=s, since=T0)  # type: ignore[arg-type]
            for q, s in (flags or {}).items()
        ],
    )


def _alerts(url: str) -> list[tuple]:  # type: ignore[type-arg]
    return query(url, "SELECT dedup_key, resolved_at IS NULL, device_id, field_id FROM alerts ORDER BY dedup_key")


def test_flags_raise_once_and_a_healthy_reading_resolves(db_url: str) -> None:
    ing = _ingestor(db_url)
    key = "sensor_health:f1:gw-01:soil-a:soil_moisture:out_of_range"
    missing = "sensor_health:f1:gw-01:soil-a:soil_ec:missing"
    bad = _telemetry(1, {"soil_moisture": 150.0}, {"soil_moisture": "out_of_range", "soil_ec": "missing"})
    _feed(ing, bad)
    _feed(ing, _telemetry(2, {"soil_moisture": 160.0}, {"soil_moisture": "out_of_range", "soil_ec": "missing"}))
    assert _alerts(db_url) == [(missing, True, "gw-01", "north"), (key, True, "gw-01", "north")]
    assert query(db_url, "SELECT COUNT(*) FROM telemetry WHERE quantity = 'soil_moisture'") == [(2,)]  # kept, flagged
    # A reading of another channel resolves nothing; the flagged channel's healthy reading does.
    _feed(ing, _telemetry(3, {"soil_moisture": 30.0}, {"soil_ec": "missing"}))
    assert _alerts(db_url) == [(missing, True, "gw-01", "north"), (key, False, "gw-01", "north")]
    _feed(ing, _telemetry(4, {"soil_moisture": 30.0, "soil_ec": 0.8}))
    assert [a[1] for a in _alerts(db_url)] == [False, False]
    assert ing.metrics.total("cropwatch_alerts_raised_total") == 2
    ing.engine.dispose()


def test_a_replayed_batch_ends_in_the_latest_state_and_old_readings_resolve_nothing(sqlite_url: str) -> None:
    ing = _ingestor(sqlite_url)
    # An outbox replay after an outage: delivered newest first within one batch.
    _feed(
        ing,
        _telemetry(5, {"soil_moisture": 150.0}, {"soil_moisture": "out_of_range"}),
        _telemetry(4, {"soil_moisture": 30.0}),
    )
    assert [a[1] for a in _alerts(sqlite_url)] == [True]
    # A reading observed before the flag began cannot clear it.
    _feed(ing, _telemetry(-10, {"soil_moisture": 30.0}))
    assert [a[1] for a in _alerts(sqlite_url)] == [True]
    ing.engine.dispose()


def test_the_rule_can_leave_out_states_or_be_switched_off(sqlite_url: str) -> None:
    ing = _ingestor(sqlite_url, states=["out_of_range"], severity="critical")
    _feed(ing, _telemetry(1, {"soil_moisture": 20.0}, {"soil_moisture": "stuck"}))
    assert _alerts(sqlite_url) == []
    _feed(ing, _telemetry(2, {"soil_moisture": 150.0}, {"soil_moisture": "out_of_range"}))
    assert query(sqlite_url, "SELECT severity FROM alerts") == [("critical",)]
    ing.engine.dispose()
    off = _ingestor(sqlite_url.replace("cropwatch.db", "off.db"), enabled=False)
    _feed(off, _telemetry(1, {"soil_moisture": 150.0}, {"soil_moisture": "out_of_range"}))
    assert _alerts(sqlite_url.replace("cropwatch.db", "off.db")) == []
    off.engine.dispose()
