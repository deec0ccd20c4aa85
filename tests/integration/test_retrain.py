"""``cropwatch retrain disease`` on a real SQLite monitor database: merge, gate, export, registry, lineage."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
import torch

from cloud_trainer.retrain import EXIT_GATE_FAILED, build_parser, run_cli
from farm_monitor.app.actions import label_sample
from farm_monitor.app.auth import User
from farm_monitor.db import make_engine
from fleet import lineage
from fleet.registry import Registry
from shared.manifest import generate_keypair
from tests.retrain_helpers import CONFUSED, store_samples

torch.set_num_threads(1)

AGRO = User("agro", "agronomist", ("*",))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, retrain_base_run: Path) -> dict:
    root = tmp_path_factory.mktemp("retrain")
    base = retrain_base_run  # shared with the e2e retraining loop; only read here
    generate_keypair(root / "keys")
    db_url = f"sqlite:///{root / 'monitor.db'}"
    # One field photo is byte for byte a base training image: the merge must drop it as a duplicate.
    base_image = next(p for p in sorted(Path(json.loads((base / "run.json").read_text())["data"]).rglob("*.jpg")))
    extra = [(base_image.read_bytes(), base_image.parent.name)]
    truth = store_samples(db_url, "farm-a", "gw-1", per_class=12, extra=extra)
    engine = make_engine(db_url)
    for msg_id, label in truth:
        label_sample(engine, AGRO, msg_id, label)
    engine.dispose()
    return {"root": root, "base": base, "db": db_url, "truth": truth, "key": root / "keys" / "cropwatch-signing.key"}


def _args(world: dict, out: Path, *extra: str):
    return build_parser("cropwatch retrain disease").parse_args(
        ["--db", world["db"], "--base", str(world["base"]), "--out", str(out), "--key", str(world["key"]),
         "--registry", str(world["root"] / "registry"), "--version", out.name, "--epochs", "4", "--threads", "1",
         "--batch-size", "8", "--quiet", "--no-int8", "--field-oversample", "3", "--lr", "1e-3", *extra]
    )  # fmt: skip


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rows(path: Path, split: str | None = None) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return [r for r in csv.DictReader(fh) if split is None or r["split"] == split]


def test_retrain_merges_gates_exports_and_records_lineage(world: dict) -> None:
    out = world["root"] / "2.0.0"
    rc = run_cli(_args(world, out, "--max-regression", "0.05"), "cropwatch retrain disease")
    report = json.loads((out / "gate" / "report.json").read_text())
    assert rc == 0 and report["passed"] is True, report["reasons"]
    field = report["field_test"]
    assert field["candidate"]["per_class"][CONFUSED]["recall"] > field["base"]["per_class"][CONFUSED]["recall"]
    assert report["fixed_test"]["base"]["n"] == report["fixed_test"]["candidate"]["n"] > 0
    # 12 field labels per class: 4 held out per class for the field test set, deterministic.
    assert report["field_test"]["candidate"]["n"] == 12
    assert report["counts"]["field_labels"] == 37 and report["counts"]["field_duplicates"] == 1
    assert (out / "gate" / "per_class.png").stat().st_size > 1000
    # The base run's fixed test set stays the test set, image for image.
    base_root = Path(json.loads((world["base"] / "run.json").read_text())["data"])
    base_test = sorted((_sha(base_root / r["path"]), r["label"]) for r in _rows(world["base"] / "split.csv", "test"))
    new_test = sorted((_sha(out / "data" / r["path"]), r["label"]) for r in _rows(out / "split.csv", "test"))
    assert len(base_test) > 0 and base_test == new_test
    entry = Registry(world["root"] / "registry").get("leaf-disease", "2.0.0")
    assert entry.manifest.training_run.endswith(str(out)[-200:])
    assert entry.manifest.training_data_fingerprint == report["dataset_fingerprint"]
    assert bool(entry.retired) == (not report["passed"])
    engine = make_engine(world["db"])
    run = lineage.run_for_version(engine, "leaf-disease", "2.0.0")
    assert run is not None and run["gate_passed"] == report["passed"]
    assert run["dataset_fingerprint"] == report["dataset_fingerprint"]
    labels = lineage.run_labels(engine, run["run_id"])
    assert len(labels) == 37 and {r["labelled_by"] for r in labels} == {"agro"}
    assert [r["role"] for r in labels].count("duplicate") == 1
    assert sum(r["role"] == "field_test" for r in labels) == 12
    assert {r["sample_msg_id"] for r in labels} == {msg for msg, _ in world["truth"]}
    assert (out / "config.json").is_file() and (out / "retrain.json").is_file()
    assert run["status"] == "candidate"


def test_a_candidate_that_fails_the_gate_is_retired_and_exits_10(world: dict) -> None:
    out = world["root"] / "2.0.1"
    # A gain of 100 points on the field test set is impossible: the gate must say so, and why.
    rc = run_cli(_args(world, out, "--min-field-gain", "1.0", "--epochs", "1"), "cropwatch retrain disease")
    assert rc == EXIT_GATE_FAILED
    report = json.loads((out / "gate" / "report.json").read_text())
    assert report["passed"] is False and report["field_test"]["ok"] is False
    assert "FAIL" in report["reasons"][1] and "above 100.00 points" in report["reasons"][1]
    entry = Registry(world["root"] / "registry").get("leaf-disease", "2.0.1")
    assert entry.retired and "evaluation gate failed" in entry.retired["reason"]
    run = lineage.run_for_version(make_engine(world["db"]), "leaf-disease", "2.0.1")
    assert run is not None and run["status"] == "gate_failed" and run["gate_passed"] is False


def test_publish_without_broker_fails_before_any_work(
    world: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = _args(world, tmp_path / "x", "--publish-farm", "farm-a", "--base-url", "http://registry:8600")
    assert run_cli(args, "cropwatch retrain disease") == 1
    assert "--publish-farm needs --broker and --base-url" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_retrain_without_labels_says_what_to_do(world: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = _args(world, tmp_path / "x", "--since", "2999-01-01")
    assert run_cli(args, "cropwatch retrain disease") == 1
    assert "no labelled samples" in capsys.readouterr().err


def test_a_label_correction_reaches_the_next_run_built_on_a_retrained_base(world: dict, tmp_path: Path) -> None:
    from cloud_trainer.retrain_data import merge, sha256_bytes
    from fleet.labels import export_labels

    base = world["root"] / "2.0.0"  # the run of the first test, itself trained on the field labels
    engine = make_engine(world["db"])
    run = lineage.run_for_version(engine, "leaf-disease", "2.0.0")
    trained = next(r for r in lineage.run_labels(engine, run["run_id"]) if r["role"] == "train")
    new_label = next(c for c in json.loads((base / "run.json").read_text())["classes"] if c != trained["label"])
    label_sample(engine, AGRO, trained["sample_msg_id"], new_label)  # the agronomist corrects it
    try:
        assert export_labels(engine, tmp_path / "export") == 37
        args = _args(world, tmp_path / "run")
        merge(base, tmp_path / "export", tmp_path / "run", args)
        data = tmp_path / "run" / "data"
        digest = trained["image_sha256"]
        rows = [r for r in _rows(data / "dataset.csv") if digest in r["path"]]
        test_rows = [r for r in _rows(data / "field_test.csv") if digest in r["path"]]
        assert [(r["label"], r["origin"]) for r in rows] in ([(new_label, "field")], [])
        assert [r["label"] for r in rows + test_rows] == [new_label]
        split = [r["label"] for r in _rows(tmp_path / "run" / "split.csv") if digest in r["path"]]
        assert set(split) <= {new_label}
        assert sha256_bytes((data / (rows + test_rows)[0]["path"]).read_bytes()) == trained["image_sha256"]
    finally:
        label_sample(engine, AGRO, trained["sample_msg_id"], trained["label"])
        engine.dispose()


def test_a_run_that_stops_before_the_gate_is_recorded_so_the_tick_waits(world: dict, tmp_path: Path) -> None:
    # A farm with no labels: the run stops at the export.
    args = _args(world, tmp_path / "e1", "--farm", "farm-without-labels")
    assert run_cli(args, "cropwatch retrain disease") == 1
    engine = make_engine(world["db"])
    run = lineage.run_for_version(engine, "leaf-disease", "e1")
    assert run is not None and run["status"] == "error" and run["run_id"] == "leaf-disease-e1"
    assert "no labelled samples" in run["status_reason"] and run["dataset_fingerprint"] is None
    # The tick counts new labels from labels_until: none are newer, so it does not retrain again.
    assert run["labels_until"] == lineage.newest_label_time(engine)
    assert lineage.labels_since(engine, run["labels_until"]) == 0
    engine.dispose()
