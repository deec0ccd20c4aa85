"""Fast checks of the monitor's config, metrics text and row conversion (no services)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from farm_monitor.config import MonitorConfig
from farm_monitor.db.dialect import sqlite_timestamp
from farm_monitor.ingest.metrics import Metrics
from farm_monitor.ingest.rows import COLUMNS, KINDS
from shared.config import load_config
from shared.errors import ConfigError
from shared.examples import example_messages


def test_config_defaults_and_env_overrides(tmp_path):
    path = tmp_path / "monitor.toml"
    path.write_text('[ingest]\nshared_group = "ingest"\n[retention.days]\ntelemetry = 30\n')
    cfg = load_config(MonitorConfig, path, environ={"CROPWATCH_DATABASE__URL": "postgresql+psycopg://db/x"})
    assert cfg.database.url == "postgresql+psycopg://db/x"
    assert cfg.ingest.shared_group == "ingest" and cfg.retention.days == {"telemetry": 30}
    assert cfg.database.sqlite_synchronous == "FULL"


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ('[ingest]\nshared_group = "Bad/Group"\n', "shared_group"),
        ("[retention.days]\nsamplez = 3\n", "samplez"),
        ("[ingest]\nbatch_max_messages = 0\n", "batch_max_messages"),
        ("[alerts.disease]\npercent = 150\n", "percent"),
    ],
)
def test_config_errors_name_the_bad_key(tmp_path, toml, needle):
    path = tmp_path / "monitor.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_config(MonitorConfig, path, environ={})
    assert needle in str(err.value)


def test_metrics_render_prometheus_text():
    mt = Metrics()
    mt.inc("cropwatch_ingest_dead_letters_total", 2, reason="non_finite")
    mt.inc("cropwatch_ingest_dead_letters_total", reason="non_finite")
    mt.set("cropwatch_ingest_lag_seconds", 0.25)
    mt.observe_batch(0.03)
    mt.observe_batch(20.0)
    text = mt.render()
    assert 'cropwatch_ingest_dead_letters_total{reason="non_finite"} 3' in text
    assert "# TYPE cropwatch_ingest_lag_seconds gauge" in text
    assert 'cropwatch_ingest_batch_seconds_bucket{le="0.05"} 1' in text
    assert 'cropwatch_ingest_batch_seconds_bucket{le="+Inf"} 2' in text
    assert mt.total("cropwatch_ingest_dead_letters_total") == 3


def test_sqlite_times_are_utc_in_sqlalchemy_format():
    cest = timezone(timedelta(hours=2))
    assert sqlite_timestamp(datetime(2026, 6, 14, 11, 30, 0, 5, tzinfo=cest)) == "2026-06-14 09:30:00.000005"
    assert sqlite_timestamp(datetime(2026, 6, 14, 9, 30, tzinfo=UTC)) == "2026-06-14 09:30:00.000000"


class _Pg:
    name = "postgresql"
    ph = "%s"

    @staticmethod
    def ts(v):
        return v

    date = ts


def test_rows_match_their_column_lists():
    ex = example_messages(fixed=True)
    (row,) = KINDS["detection"].rows(_Pg, ex["detection"], "now")
    assert len(row) == len(COLUMNS["detections"])
    as_dict = dict(zip(COLUMNS["detections"], row, strict=True))
    assert (as_dict["label"], as_dict["confidence"], as_dict["model_version"]) == (
        "Tomato___Late_blight",
        0.87,
        "1.2.0",
    )
    rows = KINDS["telemetry"].rows(_Pg, ex["telemetry"], "now")
    assert [r[1] for r in rows] == [0, 1, 2, 3]
    assert all(len(r) == len(COLUMNS["telemetry"]) for r in rows)


def test_every_contract_kind_is_wired_into_ingest_with_rows_in_its_tables_column_order():
    from farm_monitor.db.models import Base
    from shared.messages import DEVICE_KINDS

    assert set(KINDS) == set(DEVICE_KINDS)
    ex = example_messages(fixed=True)
    for kind, spec in KINDS.items():
        assert isinstance(ex[kind], spec.model)
        columns = COLUMNS[spec.table.name]
        table = Base.metadata.tables[spec.table.name]
        assert columns == tuple(c.name for c in table.columns if not (c.primary_key and c.autoincrement is True))
        for row in spec.rows(_Pg, ex[kind], "now"):
            values = dict(zip(columns, row, strict=True))
            if kind == "label":  # a farm's label goes into the labels table, keyed by its own msg_id
                assert values["msg_id"] == ex[kind].msg_id and "farm_id" not in values
                continue
            assert (values["msg_id"], values["farm_id"], values["received_at"]) == (
                ex[kind].msg_id,
                ex[kind].farm_id,
                "now",
            )


def test_a_failing_message_handler_is_logged_counted_and_survived(caplog):
    from farm_monitor.ingest.transport import MqttTransport
    from shared.settings import MqttSettings

    metrics = Metrics()
    transport = MqttTransport(MqttSettings(), "cropwatch/v1/+/+/+", metrics, client_id="unit", shared_group="grp")
    assert transport.topic == "$share/grp/cropwatch/v1/+/+/+"
    calls = []

    def handler(*args):
        calls.append(args)
        if len(calls) == 1:
            raise RuntimeError("boom")

    transport._handler = handler
    with caplog.at_level("ERROR", logger="farm_monitor.ingest.transport"):
        assert transport._on_publish(b"cropwatch/v1/f/d/event", b"{}", 7, 1) is None
    transport._on_publish(b"cropwatch/v1/f/d/event", b"{}", 8, 1)
    assert [c[2] for c in calls] == [7, 8]
    assert metrics.get("cropwatch_ingest_callback_errors_total", callback="message") == 1
    assert any("callback failed" in r.getMessage() for r in caplog.records)


def test_only_the_transport_module_of_ingest_imports_paho():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "farm_monitor"
    importing = sorted(
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if re.search(r"^\s*(import paho|from paho)", p.read_text(), flags=re.MULTILINE)
    )
    # demo.py is the demo farm's device simulator (a publisher), not part of the ingest service
    assert [p for p in importing if p != "demo.py"] == ["ingest/transport.py"]
