"""The monitor database without a broker: migrations, alerts, retention, size, ORM read-back."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

from farm_monitor import db_cli
from farm_monitor.config import MonitorConfig
from farm_monitor.db import LATEST_VERSION, current_version, make_engine, migrate
from farm_monitor.db.alerts import acknowledge
from farm_monitor.db.dialect import Dialect
from farm_monitor.db.models import Detection, Device, DeviceModel
from farm_monitor.db.retention import RetentionSettings, prune
from farm_monitor.ingest import rows
from farm_monitor.ingest.metrics import Metrics
from farm_monitor.ingest.pipeline import Ingestor
from shared import messages as m
from shared.examples import example_messages
from shared.topics import device_topic
from tests.integration.ingest_helpers import query


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")


def _ingestor(url: str, **alerts: object) -> Ingestor:
    cfg = MonitorConfig.model_validate({"database": {"url": url}, "alerts": alerts, "retention": {"interval_s": 0}})
    engine = make_engine(cfg.database, writer=True)
    migrate(engine)
    return Ingestor(cfg, engine, Metrics())


def _feed(ing: Ingestor, *msgs: m.Envelope) -> None:
    items = [
        (device_topic(x.farm_id, x.device_id, x.kind), x.to_json(), i, 1, 0, time.monotonic())
        for i, x in enumerate(msgs)
    ]
    assert ing.process(items)


def _detection(label: str, field: str = "north-field", **kw: object) -> m.Detection:
    base = example_messages(farm_id="f1", device_id="gw-01", fixed=False)["detection"]
    other = "Tomato___healthy" if label != "Tomato___healthy" else "Tomato___Late_blight"
    top = [m.LabelScore(label=label, probability=0.9), m.LabelScore(label=other, probability=0.1)]
    return base.model_copy(update={"msg_id": m.new_msg_id(), "top_k": top, "field_id": field, **kw})


def _status(outbox_age: float | None, state: str = "online", **kw: object) -> m.Status:
    now = datetime.now(UTC)
    return m.Status(
        farm_id="f1",
        device_id="gw-01",
        state=state,
        since=now - timedelta(hours=1),
        agent_version="0.2.0",
        models=[m.ActiveModel(name="leaf-disease", version="1.3.0", sha256="a" * 64)],
        health=m.Health(uptime_s=3600, outbox_depth=40 if outbox_age else 0, outbox_oldest_age_s=outbox_age),
        **kw,
    )


def test_migrations_upgrade_a_database_keeping_its_data(db_url):
    engine = make_engine(db_url)
    assert migrate(engine, target=1) == [1]
    assert current_version(engine) == 1
    det = example_messages(farm_id="f1", device_id="gw-01", fixed=False)["detection"]
    d = Dialect(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            d.insert_ignore("detections"), rows.KINDS["detection"].rows(d, det, d.ts(datetime.now(UTC)))
        )
    assert "ix_detections_field_time" not in {i["name"] for i in inspect(engine).get_indexes("detections")}

    assert db_cli.main(["--url", db_url, "migrate"]) == 0
    assert current_version(engine) == LATEST_VERSION
    names = {i["name"] for i in inspect(engine).get_indexes("detections")}
    assert {"ix_detections_device_time", "ix_detections_field_time"} <= names
    with Session(engine) as session:
        row = session.scalars(select(Detection)).one()
        assert (row.msg_id, row.label, row.model_version) == (det.msg_id, "Tomato___Late_blight", "1.2.0")
        assert row.top_k[0]["probability"] == 0.87
        assert row.observed_at.replace(tzinfo=UTC) == det.observed_at.replace(microsecond=row.observed_at.microsecond)
    assert migrate(engine) == []  # idempotent
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()


def test_alerts_fire_once_resolve_and_can_be_acknowledged(db_url):
    ing = _ingestor(
        db_url, disease={"percent": 30, "min_detections": 5, "window_hours": 24}, outbox_backlog={"older_than_s": 3600}
    )
    _feed(ing, *[_detection("Tomato___Late_blight") for _ in range(6)])
    ing.periodic(force_alerts=True)
    _feed(ing, *[_detection("Tomato___Late_blight") for _ in range(6)])
    ing.periodic(force_alerts=True)
    ing.periodic(force_alerts=True)
    rows = query(db_url, "SELECT rule, field_id, severity, resolved_at FROM alerts WHERE rule = 'disease'")
    assert rows == [("disease", "north-field", "warning", None)]

    # healthy detections bring the share under 30%: the episode resolves; a new outbreak is a new alert
    _feed(ing, *[_detection("Tomato___healthy") for _ in range(40)])
    ing.periodic(force_alerts=True)
    assert query(db_url, "SELECT COUNT(*) FROM alerts WHERE rule = 'disease' AND resolved_at IS NULL") == [(0,)]

    _feed(ing, _status(7200.0))
    _feed(ing, _status(7300.0))
    backlog = query(db_url, "SELECT id, device_id, resolved_at FROM alerts WHERE rule = 'outbox_backlog'")
    assert len(backlog) == 1 and backlog[0][1:] == ("gw-01", None)
    with ing.engine.begin() as conn:
        assert acknowledge(conn, backlog[0][0], "ana", datetime.now(UTC), ing.d) is True
        assert acknowledge(conn, backlog[0][0], "bob", datetime.now(UTC), ing.d) is False
    assert query(db_url, "SELECT acknowledged_by FROM alerts WHERE rule = 'outbox_backlog'") == [("ana",)]
    _feed(ing, _status(None))
    assert query(db_url, "SELECT COUNT(*) FROM alerts WHERE rule = 'outbox_backlog' AND resolved_at IS NULL") == [(0,)]

    # offline: nothing heard for longer than the rule's limit (evaluated at a later "now")
    later = datetime.now(UTC) + timedelta(hours=2)
    for _ in range(3):
        with ing.engine.begin() as conn:
            ing.alerts.evaluate_offline(conn, later)
    assert query(db_url, "SELECT device_id FROM alerts WHERE rule = 'device_offline'") == [("gw-01",)]
    assert ing.metrics.total("cropwatch_alerts_raised_total") == 3
    ing.engine.dispose()


def test_abstained_detections_never_count_as_a_disease(sqlite_url):
    ing = _ingestor(sqlite_url, disease={"percent": 30, "min_detections": 5, "window_hours": 24})
    # Six confident-looking late blight guesses the model abstained on, and frames that were no leaf.
    _feed(ing, *[_detection("Tomato___Late_blight", status="uncertain", trust_score=0.4) for _ in range(6)])
    _feed(ing, *[_detection("Tomato___Late_blight", status="not_a_leaf") for _ in range(6)])
    ing.periodic(force_alerts=True)
    assert query(sqlite_url, "SELECT COUNT(*) FROM alerts WHERE rule = 'disease'") == [(0,)]
    assert query(sqlite_url, "SELECT status, COUNT(*) FROM detections GROUP BY status ORDER BY 1") == [
        ("not_a_leaf", 6), ("uncertain", 6)
    ]  # fmt: skip
    # Answered ones alert, and the message counts answered detections only.
    _feed(ing, *[_detection("Tomato___Late_blight") for _ in range(5)])
    ing.periodic(force_alerts=True)
    details = query(sqlite_url, "SELECT message FROM alerts WHERE rule = 'disease'")
    assert len(details) == 1 and "100% of north-field's 5 detections" in details[0][0]
    ing.engine.dispose()


def test_device_row_follows_the_latest_status_and_the_last_will(sqlite_url):
    ing = _ingestor(sqlite_url)
    online = _status(None)
    _feed(ing, online)
    older = online.model_copy(update={"msg_id": m.new_msg_id(), "observed_at": online.observed_at - timedelta(hours=3)})
    _feed(ing, older.model_copy(update={"agent_version": "0.0.1"}))  # late replay of an old heartbeat is ignored
    with Session(ing.engine) as s:
        dev = s.get(Device, ("f1", "gw-01"))
        assert (dev.state, dev.agent_version, dev.health["outbox_depth"]) == ("online", "0.2.0", 0)
        model = s.scalars(select(DeviceModel)).one()
        assert (model.model_name, model.active_version, model.state) == ("leaf-disease", "1.3.0", "active")
    # the will is composed at connect time (older than the heartbeats) and must still win
    will = _status(None, state="offline").model_copy(
        update={"msg_id": m.new_msg_id(), "observed_at": online.observed_at - timedelta(minutes=30), "health": None}
    )
    _feed(ing, will)
    with Session(ing.engine) as s:
        dev = s.get(Device, ("f1", "gw-01"))
        assert dev.state == "offline" and dev.health is not None and dev.last_heartbeat_at is not None
    ing.engine.dispose()


def test_a_status_from_a_clock_ahead_does_not_freeze_the_device_row(db_url):
    """Found by the chaos soak: one heartbeat stamped three hours ahead outranked every real one,
    so the device's models, state and heartbeat stayed frozen for three hours (a rollback that had
    happened was not shown, and the offline alert could not fire)."""
    ing = _ingestor(db_url)
    ahead = _status(None).model_copy(
        update={"msg_id": m.new_msg_id(), "observed_at": datetime.now(UTC) + timedelta(hours=3)}
    )
    _feed(ing, ahead)
    later = _status(None).model_copy(update={"msg_id": m.new_msg_id(), "agent_version": "0.2.1"})
    later = later.model_copy(update={"models": [later.models[0].model_copy(update={"version": "1.2.0"})]})
    time.sleep(0.01)  # a distinct arrival time; not synchronisation
    _feed(ing, later)
    with Session(ing.engine) as s:
        dev = s.get(Device, ("f1", "gw-01"))
        assert dev.agent_version == "0.2.1"
        assert dev.last_heartbeat_at.replace(tzinfo=UTC) < datetime.now(UTC) + timedelta(minutes=10)
        assert s.scalars(select(DeviceModel)).one().active_version == "1.2.0"
    # The device's own words stay in the history.
    assert len(query(db_url, "SELECT msg_id FROM status_reports")) == 2
    ing.engine.dispose()


def test_prune_deletes_by_retention_and_keeps_labelled_samples(db_url, capsys):
    ing = _ingestor(db_url)
    old = datetime.now(UTC) - timedelta(days=500)
    ex = example_messages(farm_id="f1", device_id="gw-01", fixed=False)
    tele_old = ex["telemetry"].model_copy(update={"msg_id": m.new_msg_id(), "observed_at": old})
    tele_new = ex["telemetry"].model_copy(update={"msg_id": m.new_msg_id()})
    sample_old = ex["sample"].model_copy(update={"msg_id": m.new_msg_id(), "observed_at": old})
    sample_labelled = ex["sample"].model_copy(update={"msg_id": m.new_msg_id(), "observed_at": old})
    _feed(ing, tele_old, tele_new, sample_old, sample_labelled)
    d = ing.d
    with ing.engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO labels (sample_msg_id, label, labelled_by, labelled_at) "
            f"VALUES ({d.ph}, {d.ph}, {d.ph}, {d.ph})",
            (sample_labelled.msg_id, "Tomato___Late_blight", "ana", d.ts(datetime.now(UTC))),
        )
    assert db_cli.main(["--url", db_url, "prune", "--dry-run"]) == 0
    assert "telemetry        would delete 4 rows" in capsys.readouterr().out
    assert query(db_url, "SELECT COUNT(*) FROM telemetry") == [(8,)]
    assert db_cli.main(["--url", db_url, "prune"]) == 0
    assert query(db_url, "SELECT DISTINCT msg_id FROM telemetry") == [(tele_new.msg_id,)]
    assert query(db_url, "SELECT msg_id FROM samples") == [(sample_labelled.msg_id,)]
    assert db_cli.main(["--url", db_url, "size"]) == 0
    out = capsys.readouterr().out
    assert "telemetry" in out and "total on disk" in out
    ing.engine.dispose()


def test_dead_letters_are_counted_each_but_logged_at_a_limited_rate(sqlite_url, caplog):
    ing = _ingestor(sqlite_url)
    topic = device_topic("f1", "gw-01", "detection")
    now = time.monotonic()
    items = [(topic, b"{not json " + str(i).encode(), i, 1, 0, now) for i in range(5)]
    with caplog.at_level("WARNING", logger="farm_monitor.ingest.pipeline"):
        assert ing.process(items)
    lines = [r for r in caplog.records if "dead letter (invalid_json)" in r.getMessage()]
    assert len(lines) == 1
    assert ing.metrics.get("cropwatch_ingest_dead_letters_total", reason="invalid_json") == 5
    assert query(sqlite_url, "SELECT COUNT(*) FROM dead_letters WHERE reason = 'invalid_json'") == [(5,)]
    ing.engine.dispose()


def test_a_valid_kind_nobody_wired_into_ingest_is_a_dead_letter_not_an_event(sqlite_url, monkeypatch):
    # The contract accepts the kind (topic and schema are valid), but ingest has no registry entry
    # for it, as when someone adds a message kind to shared and forgets ingest.
    monkeypatch.delitem(rows.KINDS, "yield")
    ing = _ingestor(sqlite_url)
    ex = example_messages(farm_id="f1", device_id="gw-01", fixed=False)
    _feed(ing, ex["yield"], ex["event"])
    assert ing.metrics.get("cropwatch_ingest_dead_letters_total", reason="unknown_kind") == 1
    assert query(sqlite_url, "SELECT reason, topic FROM dead_letters") == [
        ("unknown_kind", device_topic("f1", "gw-01", "yield"))
    ]
    assert query(sqlite_url, "SELECT msg_id FROM events") == [(ex["event"].msg_id,)]
    assert query(sqlite_url, "SELECT COUNT(*) FROM yield_estimates") == [(0,)]
    ing.engine.dispose()


def test_a_message_the_database_refuses_becomes_a_dead_letter_not_a_stuck_batch(postgres_url):
    ing = _ingestor(postgres_url)
    with ing.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE events ADD CONSTRAINT no_boom CHECK (code <> 'boom')")
    ex = example_messages(farm_id="f1", device_id="gw-01", fixed=False)
    refused = ex["event"].model_copy(update={"msg_id": m.new_msg_id(), "code": "boom"})
    fine = [_detection("Tomato___healthy") for _ in range(3)]
    _feed(ing, fine[0], refused, *fine[1:])
    assert {r[0] for r in query(postgres_url, "SELECT msg_id FROM detections")} == {d.msg_id for d in fine}
    assert query(postgres_url, "SELECT reason, farm_id FROM dead_letters") == [("db_rejected", "f1")]
    assert ing.metrics.get("cropwatch_ingest_dead_letters_total", reason="db_rejected") == 1
    ing.engine.dispose()


def test_migration_5_adds_radio_links_to_a_version_4_database(db_url):
    engine = make_engine(db_url)
    assert migrate(engine, target=4) == [1, 2, 3, 4]
    assert "radio_links" not in inspect(engine).get_table_names()
    assert migrate(engine, target=5) == [5]
    migrate(engine)  # later steps (10: detection status) on top, as an upgrade would
    assert "ix_radio_links_device_time" in {i["name"] for i in inspect(engine).get_indexes("radio_links")}
    engine.dispose()


def test_migration_6_adds_subscriptions_and_the_delivery_ledger_to_a_version_5_database(db_url):
    engine = make_engine(db_url)
    assert migrate(engine, target=5) == [1, 2, 3, 4, 5]
    assert "subscriptions" not in inspect(engine).get_table_names()
    assert migrate(engine, target=6) == [6]
    indexes = {i["name"]: i for i in inspect(engine).get_indexes("notification_deliveries")}
    assert indexes["ux_deliveries_once"]["unique"]
    assert indexes["ux_deliveries_once"]["column_names"] == ["alert_id", "subscription_id", "channel_key", "event"]
    assert "ix_subscriptions_user" in {i["name"] for i in inspect(engine).get_indexes("subscriptions")}


def test_migration_7_adds_gateway_status_and_a_unique_label_msg_id_to_an_older_database(db_url):
    engine = make_engine(db_url)
    assert migrate(engine, target=5) == [1, 2, 3, 4, 5]
    assert "gateway_status" not in inspect(engine).get_table_names()
    # Step 1 builds tables from today's models; make labels what a release before step 7 had.
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX ux_labels_msg_id")
        conn.exec_driver_sql("ALTER TABLE labels DROP COLUMN msg_id")
    assert migrate(engine, target=7) == [6, 7]
    assert "gateway_status" in inspect(engine).get_table_names()
    assert "msg_id" in {c["name"] for c in inspect(engine).get_columns("labels")}
    assert any(i["name"] == "ux_labels_msg_id" and i["unique"] for i in inspect(engine).get_indexes("labels"))
    engine.dispose()


def test_a_telemetry_link_is_stored_once_per_message_and_pruned_with_its_age(db_url):
    ing = _ingestor(db_url)
    base = example_messages(farm_id="f1", device_id="lora-1", fixed=False)["telemetry"]
    link = m.RadioLink(rssi_dbm=-112.5, snr_db=-3.25, frame_counter=4_000_000_000, gateway_id="gw-eui-1", gateways=3)
    radio = base.model_copy(update={"msg_id": m.new_msg_id(), "link": link})
    wired = base.model_copy(update={"msg_id": m.new_msg_id(), "link": None})
    _feed(ing, radio, radio, wired)
    _feed(ing, radio)  # a replay in a later batch
    cols = "msg_id, device_id, rssi_dbm, snr_db, frame_counter, gateway_id, gateways"
    got = query(db_url, f"SELECT {cols} FROM radio_links")
    assert got == [(radio.msg_id, "lora-1", -112.5, -3.25, 4_000_000_000, "gw-eui-1", 3)]
    n_readings = len(radio.readings) + len(wired.readings)
    assert query(db_url, "SELECT COUNT(*) FROM telemetry") == [(n_readings,)]

    later = radio.observed_at + timedelta(days=2)
    pruned = prune(ing.engine, RetentionSettings(days={"radio_links": 1}), later)
    assert pruned["radio_links"] == 1
    assert query(db_url, "SELECT COUNT(*) FROM radio_links") == [(0,)]
    ing.engine.dispose()
