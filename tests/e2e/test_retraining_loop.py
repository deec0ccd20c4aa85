"""The agronomist retraining loop, end to end, on real parts.

A fleet of three agents (folder sources) on a private Mosquitto, ingest into a SQLite file, the
model registry served over HTTP, and real ONNX models trained here. Field photos of one class
(Leaf_spot) come with a look the base model never saw (tests/retrain_helpers.field_look), so the
base model confuses it. Samples arrive, an agronomist labels them through the monitor's own
labelling function, ``cropwatch retrain disease`` fine-tunes and gates the candidate and publishes it
as shadow to two devices; new field photos are scored by both models and labelled; shadow scoring
shows the challenger better; ``cropwatch retrain tick`` promotes it; new detections come from it.

The gate report and the shadow figures are written to ``retraining-loop.txt`` in the test's tmp
folder and printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import torch
from sqlalchemy import text

from cloud_trainer.disease.export import export_run
from farm_monitor.app.actions import label_sample
from farm_monitor.app.auth import User
from farm_monitor.db import make_engine
from fleet.registry import Registry
from fleet.shadow import shadow_report
from shared.manifest import generate_keypair
from tests.integration.ingest_helpers import config as ingest_config, ingest_thread
from tests.integration.rollout_helpers import farm_recorder, fleet_doc, import_model, running, serving
from tests.retrain_helpers import CONFUSED, class_names, field_jpeg
from tests.services import cropwatch_cmd, cropwatch_env, wait_for

torch.set_num_threads(1)

FARM = "loopfarm"
FLEET = ["gw-l1", "gw-l2", "gw-l3"]
SHADOW = ["gw-l1", "gw-l2"]
NAME = "leaf-disease"
AGRO = User("agro", "agronomist", ("*",))


def drop(doc: dict, name: str, jpeg: bytes) -> None:
    inbox = Path(doc["sources"][0]["path"])
    tmp = inbox / f".{name}.tmp"
    tmp.write_bytes(jpeg)
    tmp.rename(inbox / name)


def send_field_photos(docs: dict, devices: list[str], phase: str, per_class: int, seed: int) -> dict[str, str]:
    """Drop field photos round-robin on ``devices``; returns image file name -> true label."""
    truth: dict[str, str] = {}
    k = 0
    for label in class_names():
        for i in range(per_class):
            name = f"{phase}-{label[-9:].lower()}-{i:03d}.jpg"
            drop(docs[devices[k % len(devices)]], name, field_jpeg(label, i, seed))
            truth[name] = label
            k += 1
    return truth


def stored(engine, sql: str, **params) -> list:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return list(conn.execute(text(sql), params))


def label_all(engine, truth: dict[str, str]) -> int:  # type: ignore[no-untyped-def]
    """Label every stored sample of these photos, as an agronomist on the Detections page would."""
    rows = stored(engine, "SELECT msg_id, image_ref FROM samples WHERE farm_id = :f", f=FARM)
    done = 0
    for msg_id, ref in rows:
        name = Path(ref).name
        if name in truth:
            label_sample(engine, AGRO, msg_id, truth[name])
            done += 1
    return done


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cropwatch_cmd(*args), env=cropwatch_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


def test_field_labels_to_a_promoted_model(tmp_path: Path, own_broker, retrain_base_run: Path) -> None:  # type: ignore[no-untyped-def]
    report_lines: list[str] = []
    base_run = retrain_base_run  # tests/retrain_helpers.make_base_run, shared with tests/integration/test_retrain.py
    _priv, pub, _ = generate_keypair(tmp_path / "keys")
    key = tmp_path / "keys" / "cropwatch-signing.key"
    # Exported beside the test, not into the shared base run.
    _manifest, manifest_path = export_run(
        base_run, tmp_path / "export-1.0.0", name=NAME, version="1.0.0", key_path=key, int8=False
    )
    registry = Registry(tmp_path / "registry")
    v1 = SimpleNamespace(manifest_path=manifest_path, public_key=pub)
    import_model(registry, v1)  # type: ignore[arg-type]
    db_url = f"sqlite:///{tmp_path / 'monitor.db'}"
    docs = {d: fleet_doc(tmp_path / "fleet", own_broker.port, FARM, d, v1) for d in FLEET}  # type: ignore[arg-type]
    for doc in docs.values():
        # Every photo becomes a sample for labelling (confidence is always below 1).
        doc["samples"] = {"enabled": True, "confidence_below": 1.0, "max_per_hour": 1000, "max_per_day": 1000}
    rec = farm_recorder(own_broker.port, FARM)
    engine = make_engine(db_url)

    with (
        serving(registry) as url,
        ingest_thread(ingest_config(db_url, own_broker)),
        running(docs[FLEET[0]]) as a1,
        running(docs[FLEET[1]]) as a2,
        running(docs[FLEET[2]]) as a3,
    ):
        agents = {FLEET[0]: a1, FLEET[1]: a2, FLEET[2]: a3}
        # 1. Field photos arrive from the whole fleet; their samples are labelled in the monitor.
        truth1 = send_field_photos(docs, FLEET, "p1", per_class=16, seed=11)
        count = "SELECT COUNT(*) FROM samples WHERE farm_id = :f"
        wait_for(lambda: stored(engine, count, f=FARM)[0][0] >= len(truth1), 90, what="phase-1 samples stored")
        assert label_all(engine, truth1) == len(truth1)

        # 2. Retrain: gate, registry, lineage, and the candidate published as shadow to two devices.
        # One image of the 36-image fixed test set is 2.8 points; the tolerance allows two.
        retrain = run_cli(
            "retrain", "disease", "--db", db_url, "--base", str(base_run), "--out", str(tmp_path / "retrain-2"),
            "--name", NAME, "--version", "2.0.0", "--key", str(key), "--registry", str(registry.root),
            "--epochs", "4", "--lr", "1e-3", "--batch-size", "8", "--threads", "1", "--field-oversample", "3",
            "--max-regression", "0.06", "--no-int8", "--quiet",
            "--publish-farm", FARM, "--broker", own_broker.url, "--base-url", url, "--shadow-devices", *SHADOW,
        )  # fmt: skip
        assert retrain.returncode == 0, retrain.stdout[-3000:] + retrain.stderr[-5000:]
        gate_md = (tmp_path / "retrain-2" / "gate" / "report.md").read_text()
        gate = json.loads((tmp_path / "retrain-2" / "gate" / "report.json").read_text())
        report_lines += ["== evaluation gate (cropwatch retrain disease) ==", gate_md]
        assert gate["passed"] and gate["base_version"] == "1.0.0"
        field = gate["field_test"]
        assert field["candidate"]["per_class"][CONFUSED]["recall"] > field["base"]["per_class"][CONFUSED]["recall"]
        for d in SHADOW:
            wait_for(lambda d=d: agents[d].pipeline.shadow is not None
                     and agents[d].pipeline.shadow.manifest.version == "2.0.0", 60, what=f"shadow on {d}")  # fmt: skip
        assert agents[FLEET[2]].pipeline.shadow is None

        # 3. New field photos on the shadow devices: both models answer, agronomists label.
        truth2 = send_field_photos(docs, SHADOW, "p2", per_class=12, seed=23)
        shadowed = "SELECT COUNT(*) FROM detections WHERE farm_id = :f AND shadow IS NOT NULL"
        wait_for(lambda: stored(engine, shadowed, f=FARM)[0][0] >= len(truth2), 90, what="shadow detections stored")
        wait_for(lambda: stored(engine, count, f=FARM)[0][0] >= len(truth1) + len(truth2), 60, what="samples")
        assert label_all(engine, truth2) >= len(truth2)
        (score,) = shadow_report(engine, FARM, NAME, challenger="2.0.0")
        report_lines += [
            "== shadow scoring (fleet.shadow.shadow_report) ==",
            f"champion {score.champion_version} vs challenger {score.challenger_version}: "
            f"{score.compared} detections compared, agreement {score.agreement:.3f}; "
            f"{score.labelled} labelled: champion accuracy {score.champion_accuracy:.3f} "
            f"({score.champion_correct}/{score.labelled}), challenger accuracy {score.challenger_accuracy:.3f} "
            f"({score.challenger_correct}/{score.labelled})",
        ]
        assert score.compared == len(truth2) and score.labelled == len(truth2)
        assert score.challenger_accuracy > score.champion_accuracy

        # 4. The timer's tick promotes the winner.
        cfg = tmp_path / "retrain.toml"
        cfg.write_text(
            f'[database]\nurl = "{db_url}"\n[registry]\npath = "{registry.root}"\nbase_url = "{url}"\n'
            f'[broker]\nurl = "{own_broker.url}"\n[retrain]\nmodel_name = "{NAME}"\nbase_run = "{base_run}"\n'
            f'key = "{key}"\nmin_new_labels = 1000\ninterval_hours = 0\n'
            f'[shadow]\nfarm = "{FARM}"\ndevices = {json.dumps(SHADOW)}\n'
            f"[promotion]\nmargin = 0.05\nmin_labelled = 20\n"
        )
        tick = run_cli("retrain", "tick", "--config", str(cfg), "--json", timeout=120)
        assert tick.returncode == 0, tick.stderr[-3000:]
        decision = json.loads(tick.stdout)
        report_lines += ["== cropwatch retrain tick ==", json.dumps(decision["promotion"], indent=1)]
        assert decision["promotion"]["action"] == "promote", decision
        for d, agent in agents.items():
            wait_for(lambda agent=agent: agent.pipeline.champion.manifest.version == "2.0.0"
                     and agent.updater.trial is None, 60, what=f"2.0.0 champion on {d}")  # fmt: skip
            wait_for(lambda agent=agent: agent.pipeline.shadow is None, 30, what=f"shadow run ended on {d}")

        # 5. New detections come from the new version, on every device.
        before = stored(engine, "SELECT COUNT(*) FROM detections WHERE farm_id = :f", f=FARM)[0][0]
        for i, d in enumerate(FLEET):
            drop(docs[d], f"p3-{i}.jpg", field_jpeg(CONFUSED, 100 + i, 31))
        new = "SELECT device_id, model_version FROM detections WHERE farm_id = :f AND image_ref LIKE '%p3-%'"
        wait_for(lambda: len(stored(engine, new, f=FARM)) == len(FLEET), 60, what="detections after promotion")
        assert {(r[0], r[1]) for r in stored(engine, new, f=FARM)} == {(d, "2.0.0") for d in FLEET}
        assert stored(engine, "SELECT COUNT(*) FROM detections WHERE farm_id = :f", f=FARM)[0][0] == before + 3

    # Lineage: a new detection -> 2.0.0 -> its run -> fingerprint and the labels in it.
    from fleet import lineage

    det_id = stored(engine, new.replace("device_id, model_version", "msg_id"), f=FARM)[0][0]
    chain = lineage.detection_lineage(engine, FARM, det_id)
    assert chain is not None and chain["run"]["model_version"] == "2.0.0"
    assert chain["run"]["dataset_fingerprint"] == gate["dataset_fingerprint"] and chain["run"]["status"] == "promoted"
    assert len(chain["labels"]) == len(truth1) and {r["labelled_by"] for r in chain["labels"]} == {"agro"}
    report_lines += [
        "== lineage ==",
        f"detection {det_id} -> {NAME} {chain['detection']['model_version']} -> run {chain['run']['run_id']} "
        f"(base {chain['run']['base_model_version']}, {chain['run']['dataset_fingerprint']}) -> "
        f"{len(chain['labels'])} labels by {sorted({r['labelled_by'] for r in chain['labels']})}",
    ]
    out = tmp_path / "retraining-loop.txt"
    out.write_text("\n".join(report_lines) + "\n")
    print("\n" + out.read_text())
    rec.close()
    engine.dispose()
