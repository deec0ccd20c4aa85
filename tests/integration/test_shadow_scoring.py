"""Shadow scoring and the retrain tick's decisions on a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import text as text_

from cloud_trainer.retrain_tick import RetrainConfig, main, tick
from farm_monitor.app.actions import label_sample
from farm_monitor.app.auth import User
from farm_monitor.config import MonitorConfig
from farm_monitor.db import make_engine, migrate
from farm_monitor.ingest.metrics import Metrics
from farm_monitor.ingest.pipeline import Ingestor
from fleet import lineage
from fleet.shadow import shadow_report
from shared import messages as m
from shared.ids import new_msg_id
from shared.topics import device_topic, fleet_shadow_topic

AGRO = User("agro", "agronomist", ("*",))
CHAMP = m.ModelRef(name="leaf-disease", version="1.0.0", sha256="1" * 64)
CHALL = m.ModelRef(name="leaf-disease", version="2.0.0", sha256="2" * 64)


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (40, 120, 40)).save(buf, format="JPEG")
    return buf.getvalue()


def _top(label: str) -> list[m.LabelScore]:
    other = "healthy" if label != "healthy" else "rust"
    return [m.LabelScore(label=label, probability=0.7), m.LabelScore(label=other, probability=0.3)]


def seed_shadow(url: str, start: datetime) -> None:
    """10 detections with a shadow answer; 6 have a labelled sample. Champion right on 3 of 6, challenger on 5."""
    cfg = MonitorConfig.model_validate({"database": {"url": url}})
    engine = make_engine(cfg.database, writer=True)
    migrate(engine)
    #          champion   challenger  truth (None: no sample)
    cases = [("healthy", "rust", "rust"), ("healthy", "rust", "rust"), ("healthy", "rust", "rust"),
             ("rust", "rust", "rust"), ("healthy", "healthy", "healthy"), ("rust", "healthy", "rust"),
             ("rust", "rust", None), ("healthy", "healthy", None), ("healthy", "rust", None),
             ("rust", "rust", None)]  # fmt: skip
    msgs: list[m.Envelope] = []
    labels: list[tuple[str, str]] = []
    for i, (champ, chall, truth) in enumerate(cases):
        det = m.Detection(
            farm_id="farm-a", device_id="gw-1", msg_id=new_msg_id(), observed_at=start + timedelta(seconds=i),
            model=CHAMP, source="cam", image_ref=f"cam/{i}.jpg", top_k=_top(champ),
            shadow=m.ShadowResult(model=CHALL, top_k=_top(chall)),
        )  # fmt: skip
        msgs.append(det)
        if truth is not None:
            sample = m.Sample(
                farm_id="farm-a", device_id="gw-1", msg_id=new_msg_id(), observed_at=det.observed_at,
                reason="shadow_disagreement" if champ != chall else "random", model=CHAMP,
                detection_msg_id=det.msg_id, predicted_label=champ, confidence=0.7, width=8, height=8,
                image_jpeg=_jpeg(),
            )  # fmt: skip
            msgs.append(sample)
            labels.append((sample.msg_id, truth))
    # A detection without a shadow answer is not compared.
    msgs.append(m.Detection(farm_id="farm-a", device_id="gw-1", msg_id=new_msg_id(), observed_at=start, model=CHAMP,
                            source="cam", image_ref="cam/x.jpg", top_k=_top("rust")))  # fmt: skip
    ingest = Ingestor(cfg, engine, Metrics())
    assert ingest.process([(device_topic(x.farm_id, x.device_id, x.kind), x.to_json(), i, 1, 0, 0.0)
                           for i, x in enumerate(msgs)])  # fmt: skip
    # A first, wrong opinion on the first sample: the latest label counts.
    label_sample(engine, AGRO, labels[0][0], "healthy")
    for msg_id, truth in labels:
        label_sample(engine, AGRO, msg_id, truth)
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'monitor.db'}"
    return request.getfixturevalue("postgres_url")


def test_shadow_report_counts_agreement_and_accuracy_of_each(db_url: str) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    seed_shadow(db_url, start)
    engine = make_engine(db_url)
    (score,) = shadow_report(engine, "farm-a", "leaf-disease")
    assert (score.champion_version, score.challenger_version) == ("1.0.0", "2.0.0")
    assert score.compared == 10 and score.agreed == 5 and score.agreement == 0.5
    assert score.labelled == 6 and score.champion_correct == 3 and score.challenger_correct == 5
    assert score.margin == pytest.approx(2 / 6)
    assert shadow_report(engine, "farm-a", "leaf-disease", since=start + timedelta(hours=2)) == []
    assert shadow_report(engine, "farm-b", "leaf-disease") == []
    engine.dispose()


def _config(tmp_path: Path, url: str, **promotion: object) -> Path:
    doc = {
        "database": {"url": url},
        "retrain": {"base_run": str(tmp_path / "base"), "min_new_labels": 5, "interval_hours": 0},
        "shadow": {"farm": "farm-a"},
        # Publishing needs both; nothing connects unless a tick publishes without a test publisher.
        "broker": {"url": "mqtt://127.0.0.1:1"},
        "promotion": {"margin": 0.2, "min_labelled": 5, **promotion},
    }
    path = tmp_path / "retrain.toml"
    doc["registry"] = {"path": str(tmp_path / "registry"), "base_url": "http://registry:8600"}
    lines = []
    for section, values in doc.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _live_shadow(url: str, published: datetime) -> None:
    engine = make_engine(url)
    lineage.record_run(
        engine,
        {"run_id": "retrain-2.0.0", "model_name": "leaf-disease", "model_version": "2.0.0",
         "base_model_version": "1.0.0", "base_run": "/runs/base", "run_dir": "/runs/retrain-2.0.0",
         "dataset_fingerprint": "sha256:" + "a" * 64, "base_dataset_fingerprint": None, "created_at": published,
         "labels_until": published, "gate_passed": True, "gate": {"passed": True}, "counts": {},
         "status": "shadow", "status_at": published},
        [],
    )  # fmt: skip
    engine.dispose()


def test_tick_decides_promotion_from_shadow_scores(tmp_path: Path) -> None:
    from shared.config import load_config

    url = f"sqlite:///{tmp_path / 'monitor.db'}"
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    seed_shadow(url, start)
    _live_shadow(url, start - timedelta(minutes=1))
    decision = tick(load_config(RetrainConfig, _config(tmp_path, url)), dry_run=True)
    p = decision["promotion"]
    assert p["action"] == "promote" and p["labelled"] == 6 and p["margin"] == pytest.approx(2 / 6)
    assert "5/6" in p["why"] and "3/6" in p["why"]
    assert decision["retrain"]["action"] == "none" and "being scored" in decision["retrain"]["why"]
    waiting = tick(load_config(RetrainConfig, _config(tmp_path, url, min_labelled=50)), dry_run=True)
    assert waiting["promotion"]["action"] == "wait" and "6 labelled detections of 50" in waiting["promotion"]["why"]
    close = tick(load_config(RetrainConfig, _config(tmp_path, url, margin=0.6)), dry_run=True)
    assert close["promotion"]["action"] == "wait"
    # Dry runs change nothing.
    engine = make_engine(url)
    assert lineage.latest_run(engine, "leaf-disease")["status"] == "shadow"


def test_tick_retrains_when_enough_new_labels(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    url = f"sqlite:///{tmp_path / 'monitor.db'}"
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    seed_shadow(url, start)  # 7 labels
    cfg_path = _config(tmp_path, url)
    assert main(["--config", str(cfg_path), "--dry-run", "--json"], "cropwatch retrain tick") == 0
    decision = json.loads(capsys.readouterr().out)
    assert decision["retrain"]["action"] == "retrain" and decision["retrain"]["new_labels"] == 7
    assert decision["retrain"]["base_run"] == str(tmp_path / "base")
    # A run that saw every label so far resets the count.
    engine = make_engine(url)
    _live_shadow(url, datetime.now(UTC))
    lineage.set_status(engine, "retrain-2.0.0", "gate_failed", "test")
    assert main(["--config", str(cfg_path), "--dry-run"], "cropwatch retrain tick") == 0
    out = capsys.readouterr().out
    assert "retrain: none (0 new labels < 5" in out


def test_tick_config_is_checked(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "retrain.toml"
    path.write_text('[database]\nurl = "sqlite:///x.db"\n[retrain]\nbase_run = "runs/base"\nmin_new_labels = 0\n')
    assert main(["--config", str(path), "--check-config"], "cropwatch retrain tick") == 2
    assert "retrain.min_new_labels" in capsys.readouterr().err
    path.write_text('[database]\nurl = "sqlite:///x.db"\n[retrain]\nbase_run = "b"\n[broker]\npassword = "s3"\n')
    assert main(["--config", str(path), "--check-config"], "cropwatch retrain tick") == 0
    out = capsys.readouterr().out
    assert "s3" not in out and "**********" in out


def test_tick_leaves_a_shadow_run_that_was_ended_by_hand(tmp_path: Path) -> None:
    from fleet import rollout
    from fleet.registry import Registry
    from shared.config import load_config

    url = f"sqlite:///{tmp_path / 'monitor.db'}"
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    seed_shadow(url, start)
    _live_shadow(url, start - timedelta(minutes=1))
    path = _config(tmp_path, url)
    sent: list[tuple[str, bytes]] = []
    # What `cropwatch models end-shadow` leaves in the rollout history.
    rollout.end_shadow(Registry(tmp_path / "registry"), "leaf-disease", "farm-a", lambda t, p: sent.append((t, p)))
    decision = tick(load_config(RetrainConfig, path))
    assert decision["promotion"]["action"] == "none" and "no longer live" in decision["promotion"]["why"]
    assert lineage.latest_run(make_engine(url), "leaf-disease")["status"] == "superseded"


def test_lineage_round_trip(db_url: str) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    seed_shadow(db_url, start)
    engine = make_engine(db_url)
    with engine.connect() as conn:
        samples = [r[0] for r in conn.execute(text_("SELECT msg_id FROM samples ORDER BY msg_id"))]
        det = conn.execute(text_("SELECT msg_id FROM detections WHERE shadow IS NOT NULL LIMIT 1")).scalar()
    run = {
        "run_id": "retrain-1.0.0", "model_name": "leaf-disease", "model_version": "1.0.0",
        "base_model_version": "0.9.0", "base_run": "/runs/base", "run_dir": "/runs/" + "deep/" * 150 + "r",
        "dataset_fingerprint": "sha256:" + "a" * 64, "base_dataset_fingerprint": "sha256:" + "b" * 64,
        "created_at": start, "labels_until": start, "gate_passed": True,
        "gate": {"passed": True, "reasons": ["ok"]}, "counts": {"field_labels": 2}, "status": "candidate",
    }  # fmt: skip
    roles = {samples[0]: "train", samples[1]: "field_test"}
    labels = [{"sample_msg_id": s, "label": "rust", "labelled_by": "agro", "labelled_at": start,
               "image_sha256": "c" * 64, "role": role} for s, role in roles.items()]  # fmt: skip
    lineage.record_run(engine, run, labels)
    lineage.record_run(engine, run, labels)  # re-recording a run replaces it
    chain = lineage.detection_lineage(engine, "farm-a", det)
    assert (
        chain["detection"]["model_version"] == "1.0.0" and chain["detection"]["shadow"]["model"]["version"] == "2.0.0"
    )
    assert chain["run"]["gate"]["reasons"] == ["ok"] and chain["run"]["created_at"] == start
    assert chain["run"]["run_dir"] == run["run_dir"]  # longer than 512 characters: PostgreSQL stores it whole
    assert sorted(r["role"] for r in chain["labels"]) == ["field_test", "train"]
    assert lineage.labels_since(engine, start - timedelta(minutes=1)) == 7
    assert lineage.labels_since(engine, datetime.now(UTC) + timedelta(minutes=1)) == 0
    assert lineage.detection_lineage(engine, "farm-b", det) is None
    lineage.set_status(engine, "retrain-1.0.0", "shadow", "published")
    assert lineage.latest_run(engine, "leaf-disease", ("shadow",))["status_reason"] == "published"
    engine.dispose()


def test_tick_scores_a_candidate_published_as_shadow_by_hand(tmp_path: Path) -> None:
    from fleet import rollout
    from fleet.registry import Registry
    from shared.config import load_config
    from shared.messages import RolloutPolicy
    from tests.edge_models import build_classifier
    from tests.integration.rollout_helpers import import_model

    url = f"sqlite:///{tmp_path / 'monitor.db'}"
    registry = Registry(tmp_path / "registry")
    import_model(registry, build_classifier(tmp_path / "build", name="leaf-disease", version="2.0.0"))
    migrate(make_engine(url))
    _live_shadow(url, datetime.now(UTC) - timedelta(hours=2))
    lineage.set_status(make_engine(url), "retrain-2.0.0", "candidate", "gate passed, not published")
    sent: list[tuple[str, bytes]] = []
    # What `cropwatch models publish leaf-disease 2.0.0 --mode shadow` does.
    rollout.publish(registry, "leaf-disease", "2.0.0", "farm-a", "http://registry:8600",
                    lambda t, p: sent.append((t, p)), RolloutPolicy(mode="shadow"))  # fmt: skip
    seed_shadow(url, datetime.now(UTC) + timedelta(seconds=1))  # detections after the publish
    path = _config(tmp_path, url)
    decision = tick(load_config(RetrainConfig, path), dry_run=True)
    assert decision["promotion"]["action"] == "promote" and decision["promotion"]["labelled"] == 6
    assert lineage.latest_run(make_engine(url), "leaf-disease")["status"] == "candidate"  # dry run
    done = tick(load_config(RetrainConfig, path), publisher=lambda t, p: sent.append((t, p)))
    assert done["promotion"]["action"] == "promote"
    run = lineage.latest_run(make_engine(url), "leaf-disease")
    assert run["status"] == "promoted" and "5/6 labelled" in run["status_reason"]
    history = rollout.read_history(registry, "farm-a", "leaf-disease")
    assert [r["action"] for r in history][-2:] == ["promote", "end_shadow"] and history[-2]["version"] == "2.0.0"
    with make_engine(url).connect() as conn:
        desired = conn.execute(text_("SELECT role, desired_version, desired_by FROM device_models ORDER BY role")).all()
    # The monitor's devices page shows what the tick asked for; ending the run (published by hand
    # without --db, so no shadow row) adds no empty shadow row.
    assert [tuple(r) for r in desired] == [("champion", "2.0.0", "retrain tick")]


def test_tick_marks_a_shadow_run_promoted_by_hand_and_retrains_from_it(tmp_path: Path) -> None:
    from fleet import rollout
    from fleet.registry import Registry
    from shared.config import load_config
    from shared.messages import RolloutPolicy
    from tests.edge_models import build_classifier
    from tests.integration.rollout_helpers import import_model

    url = f"sqlite:///{tmp_path / 'monitor.db'}"
    registry = Registry(tmp_path / "registry")
    import_model(registry, build_classifier(tmp_path / "build", name="leaf-disease", version="2.0.0"))
    migrate(make_engine(url))
    published = datetime.now(UTC) - timedelta(hours=2)
    # An older retrained champion, promoted earlier: superseded once 2.0.0 is promoted.
    engine = make_engine(url)
    lineage.record_run(
        engine,
        {"run_id": "retrain-1.5.0", "model_name": "leaf-disease", "model_version": "1.5.0",
         "base_model_version": "1.0.0", "base_run": "/runs/base", "run_dir": "/runs/retrain-1.5.0",
         "dataset_fingerprint": "sha256:" + "b" * 64, "base_dataset_fingerprint": None,
         "created_at": published - timedelta(days=1), "labels_until": published - timedelta(days=1),
         "gate_passed": True, "gate": {"passed": True}, "counts": {}, "status": "promoted"},
        [],
    )  # fmt: skip
    _live_shadow(url, published)
    sent: list[tuple[str, bytes]] = []
    send = lambda t, p: sent.append((t, p))  # noqa: E731
    rollout.publish(registry, "leaf-disease", "2.0.0", "farm-a", "http://registry:8600", send,
                    RolloutPolicy(mode="shadow"))  # fmt: skip
    # What `cropwatch models promote leaf-disease --farm farm-a` does: it also ends the shadow run.
    rollout.promote(registry, "leaf-disease", "farm-a", send)
    seed_shadow(url, datetime.now(UTC) - timedelta(minutes=30))  # 7 new labels
    path = _config(tmp_path, url)
    decision = tick(load_config(RetrainConfig, path), publisher=send)
    assert decision["promotion"]["action"] == "none" and "promoted" in decision["promotion"]["why"]
    runs = {r["run_id"]: r for r in lineage.runs(engine, "leaf-disease")}
    assert runs["retrain-2.0.0"]["status"] == "promoted", runs["retrain-2.0.0"]["status_reason"]
    assert runs["retrain-1.5.0"]["status"] == "superseded"
    # The next retraining starts from the champion the farm runs, 2.0.0.
    nxt = tick(load_config(RetrainConfig, path), dry_run=True)
    assert nxt["retrain"]["action"] == "retrain" and nxt["retrain"]["base_run"] == "/runs/retrain-2.0.0"
    engine.dispose()


def test_a_newer_run_does_not_hide_the_live_shadow_run(tmp_path: Path) -> None:
    from shared.config import load_config

    url = f"sqlite:///{tmp_path / 'monitor.db'}"
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    seed_shadow(url, start)
    _live_shadow(url, start - timedelta(minutes=1))
    engine = make_engine(url)
    # A run by hand after the shadow publish, whose gate failed: the newest run, but not the one being scored.
    lineage.record_run(
        engine,
        {"run_id": "retrain-2.0.1", "model_name": "leaf-disease", "model_version": "2.0.1",
         "base_model_version": "1.0.0", "base_run": "/runs/base", "run_dir": "/runs/retrain-2.0.1",
         "dataset_fingerprint": "sha256:" + "c" * 64, "base_dataset_fingerprint": None,
         "created_at": datetime.now(UTC), "labels_until": datetime.now(UTC), "gate_passed": False,
         "gate": {"passed": False}, "counts": {}, "status": "gate_failed"},
        [],
    )  # fmt: skip
    decision = tick(load_config(RetrainConfig, _config(tmp_path, url)), dry_run=True)
    assert decision["promotion"]["action"] == "promote" and decision["promotion"]["challenger"] == "2.0.0"
    assert "being scored" in decision["retrain"]["why"]
    engine.dispose()


def test_tick_publishes_a_gate_passed_candidate_left_unpublished(tmp_path: Path) -> None:
    from fleet import rollout
    from fleet.registry import Registry
    from shared.config import load_config
    from tests.edge_models import build_classifier
    from tests.integration.rollout_helpers import import_model

    url = f"sqlite:///{tmp_path / 'monitor.db'}"
    registry = Registry(tmp_path / "registry")
    import_model(registry, build_classifier(tmp_path / "build", name="leaf-disease", version="2.0.0"))
    seed_shadow(url, datetime.now(UTC) - timedelta(hours=3))  # gw-1 is a known device of farm-a
    _live_shadow(url, datetime.now(UTC) - timedelta(hours=2))
    lineage.set_status(make_engine(url), "retrain-2.0.0", "candidate", "gate passed; the publish failed")
    sent: list[tuple[str, bytes]] = []
    decision = tick(load_config(RetrainConfig, _config(tmp_path, url)), publisher=lambda t, p: sent.append((t, p)))
    assert decision["promotion"]["action"] == "publish_shadow" and decision["retrain"]["action"] == "none"
    live = rollout.current_shadow(rollout.read_history(registry, "farm-a", "leaf-disease"))
    assert live is not None and live["version"] == "2.0.0"
    assert [t for t, _ in sent] == [fleet_shadow_topic("farm-a", "leaf-disease")]
    engine = make_engine(url)
    assert lineage.latest_run(engine, "leaf-disease")["status"] == "shadow"
    with engine.connect() as conn:
        desired = conn.execute(
            text_("SELECT device_id, desired_version, desired_by FROM device_models WHERE role = 'shadow'")
        ).all()
    assert [tuple(r) for r in desired] == [("gw-1", "2.0.0", "retrain tick")]
    engine.dispose()


def test_tick_config_with_a_shadow_farm_needs_broker_and_base_url(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / "retrain.toml"
    path.write_text('[database]\nurl = "sqlite:///x.db"\n[retrain]\nbase_run = "b"\n[shadow]\nfarm = "farm-a"\n')
    assert main(["--config", str(path), "--check-config"], "cropwatch retrain tick") == 2
    err = capsys.readouterr().err
    assert "broker.url" in err and "registry.base_url" in err


def test_tick_passes_min_field_test_to_the_retrain(tmp_path: Path) -> None:
    from cloud_trainer.retrain_tick import retrain_args
    from shared.config import load_config

    path = _config(tmp_path, f"sqlite:///{tmp_path / 'monitor.db'}")
    path.write_text(path.read_text().replace("[retrain]\n", "[retrain]\nmin_field_test = 9\n"))
    args = retrain_args(load_config(RetrainConfig, path), tmp_path / "base", "3.0.0")
    assert args.min_field_test == 9 and args.publish_farm == "farm-a" and args.broker == "mqtt://127.0.0.1:1"
