"""fleet.desired on both databases: the monitor's desired rows through the ORM (an upsert per dialect)."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from farm_monitor.db import make_engine, migrate
from fleet.desired import record_desired, record_model, rollout_status
from shared.messages import RolloutPolicy


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url"))


def test_desired_rows_are_upserted_cleared_and_shown(db_url: str) -> None:
    engine = make_engine(db_url)
    migrate(engine)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO devices (farm_id, device_id) VALUES ('f', 'a'), ('f', 'b'), ('g', 'c')"))
    assert record_desired(db_url, "f", "leaf", "champion", "1.0.0", None, "ann") == 2
    # A second publish to one device replaces its desire and leaves the other device's row alone.
    assert record_desired(db_url, "f", "leaf", "champion", "1.1.0", RolloutPolicy(devices=["a"]), "bob") == 1
    # Clearing a desire (end of a shadow run) updates existing rows only: no NULL row per device.
    assert record_desired(db_url, "f", "leaf", "shadow", None, None, "tick") == 2
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT device_id, role, desired_version, desired_by FROM device_models")).all()
    engine.dispose()
    assert sorted(tuple(r) for r in rows) == [("a", "champion", "1.1.0", "bob"), ("b", "champion", "1.0.0", "ann")]
    status = rollout_status(db_url, "f", "leaf")
    assert [(r["device"], r["role"], r["desired"], r["active"]) for r in status] == [
        ("a", "champion", "1.1.0", "-"),
        ("b", "champion", "1.0.0", "-"),
    ]


def test_published_manifests_are_kept_for_the_monitors_display_names(db_url: str) -> None:
    from farm_monitor.app.queries import Sql, display_names
    from shared.examples import example_manifest

    engine = make_engine(db_url)
    migrate(engine)
    old = example_manifest()  # no display-name table: it adds nothing
    names = {"Tomato___Late_blight": "Tomato · Late blight (Phytophthora)"}
    new = old.model_copy(update={"version": "2.0.0", "display_names": names})
    record_model(db_url, old)
    record_model(db_url, new)
    record_model(db_url, new)  # a second publish of one version keeps one row
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT name, version, task, sha256 FROM models ORDER BY version")).all()
    assert [(r.version, r.task, r.sha256) for r in rows] == [
        (old.version, "disease_classification", old.sha256),
        ("2.0.0", "disease_classification", new.sha256),
    ]
    assert display_names(Sql(engine)) == names
    engine.dispose()
