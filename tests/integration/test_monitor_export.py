"""``cropwatch data export-labels`` writes what the disease trainer reads."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

from sqlalchemy import text

from cloud_trainer.disease.dataset import load_dataset
from farm_monitor.app.actions import label_sample
from farm_monitor.app.auth import UsersFile
from farm_monitor.db import make_engine
from tests.monitor_seed import seed
from tests.services import cropwatch_cmd, cropwatch_env


def test_export_labels_is_a_training_set(tmp_path: Path) -> None:
    world = seed(tmp_path / "w")
    engine = make_engine(world.db_url)
    agro = UsersFile(world.config.app.users_file).get("agro")
    with engine.connect() as conn:
        ids = list(conn.execute(text("SELECT msg_id FROM samples WHERE farm_id = 'farm-a' ORDER BY msg_id")).scalars())
    assert len(ids) == 6
    for i, msg_id in enumerate(ids):
        label_sample(engine, agro, msg_id, "Tomato___Late_blight" if i % 2 else "Tomato/healthy leaf")
    label_sample(engine, agro, ids[0], "Tomato___healthy")  # a second opinion: the latest counts
    out = tmp_path / "export"
    proc = subprocess.run(
        cropwatch_cmd("data", "export-labels", "--config", str(world.config_path), "--out", str(out), "--farm",
                      "farm-a"),
        env=cropwatch_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((out / "labels.csv").open()))
    assert len(rows) == 6
    by_id = {r["msg_id"]: r for r in rows}
    assert by_id[ids[0]]["label"] == "Tomato___healthy" and by_id[ids[0]]["labelled_by"] == "agro"
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        "Tomato___Late_blight", "Tomato___healthy", "Tomato_healthy_leaf"
    ]  # fmt: skip
    ds = load_dataset(out / "labels.csv", min_per_class=1)
    assert ds.classes == ["Tomato/healthy leaf", "Tomato___Late_blight", "Tomato___healthy"]
