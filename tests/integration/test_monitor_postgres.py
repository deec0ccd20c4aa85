"""The monitor's SQL on PostgreSQL: the same pages over a database ingest filled on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from streamlit.testing.v1 import AppTest

from farm_monitor.app.actions import label_sample
from farm_monitor.app.auth import UsersFile
from farm_monitor.db import make_engine
from tests.monitor_seed import seed

VIEWS = Path(__file__).resolve().parents[2] / "farm_monitor" / "app" / "views"


def test_pages_and_labelling_on_postgres(postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world = seed(tmp_path / "pg", db_url=postgres_url)
    monkeypatch.setenv("CROPWATCH_CONFIG", str(world.config_path))
    for name in ("overview", "field", "detections", "alerts", "devices", "device", "models"):
        at = AppTest.from_file(str(VIEWS / f"{name}.py"), default_timeout=60)
        at.session_state["cw_username"] = "farmer-a"
        at.run()
        assert not at.exception and not at.error, (name, at.exception, [e.value for e in at.error])
        assert not at.info or name == "models", (name, [i.value for i in at.info])  # no empty states: data shows
    at = AppTest.from_file(str(VIEWS / "field.py"), default_timeout=60)
    at.session_state["cw_username"] = "agro"
    at.run()
    assert at.metric[0].value == "high"  # the north field's disease share, computed in PostgreSQL
    engine = make_engine(postgres_url)
    with engine.connect() as conn:
        sample = conn.execute(text("SELECT msg_id FROM samples WHERE farm_id = 'farm-a' LIMIT 1")).scalar()
    label_sample(engine, UsersFile(world.config.app.users_file).get("agro"), sample, "Tomato___healthy")
    at = AppTest.from_file(str(VIEWS / "detections.py"), default_timeout=60)
    at.session_state["cw_username"] = "agro"
    at.run()
    assert any("Tomato · Healthy" in c.value and "agro" in c.value for c in at.caption)
    engine.dispose()
