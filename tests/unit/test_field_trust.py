"""Abstention pieces: the manifest block, the detection status, the agent's verdicts and sampling,
the threshold rule and the risk-coverage figures, and migration 10 on an older database."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import inspect, text

from cloud_trainer.disease import trust as T
from edge_agent.abstain import trust_scores, verdicts
from farm_monitor.db.engine import make_engine
from farm_monitor.db.migrations import migrate
from shared.examples import example_manifest, example_messages
from shared.manifest import (
    Abstention,
    ModelManifest,
    TensorSpec,
    TrustedKeys,
    generate_keypair,
    load_private_key,
    load_public_key,
    sign_manifest,
    verify_manifest,
)
from shared.messages import Detection, parse_device_message


def _with_trust(rule: Abstention | None) -> ModelManifest:
    m = example_manifest().model_copy(update={"signature": None})
    outs = [*m.outputs, TensorSpec(name="familiarity", dtype="float32", shape=["batch", 1]),
            TensorSpec(name="leaf", dtype="float32", shape=["batch", 1])]  # fmt: skip
    return ModelManifest.model_validate(m.model_dump() | {"outputs": outs, "abstention": rule})


RULE = Abstention(score="prototype_cosine", score_output="familiarity", threshold=0.7, leaf_output="leaf")


def test_abstention_is_signed_and_an_old_manifest_keeps_its_bytes(tmp_path: Path) -> None:
    priv, pub, _ = generate_keypair(tmp_path)
    signed = sign_manifest(_with_trust(RULE), load_private_key(priv))
    again = ModelManifest.model_validate_json(signed.to_json())
    assert again.abstention == RULE
    verify_manifest(again, TrustedKeys([load_public_key(str(pub))]))
    loosened = again.model_copy(update={"abstention": RULE.model_copy(update={"threshold": 0.1})})
    with pytest.raises(Exception, match="signature"):
        verify_manifest(loosened, TrustedKeys([load_public_key(str(pub))]))
    assert "abstention" not in json.loads(_with_trust(None).canonical_bytes())


def test_abstention_must_name_outputs_the_model_has() -> None:
    with pytest.raises(ValueError, match="abstention names output"):
        _with_trust(RULE.model_copy(update={"score_output": "nope"}))
    with pytest.raises(ValueError, match="needs score_output"):
        Abstention(score="energy", threshold=1.0)


def test_detection_status_is_left_out_when_ok_and_round_trips_when_not() -> None:
    det = example_messages()["detection"]
    assert isinstance(det, Detection)
    assert "status" not in json.loads(det.to_json()) and "trust_score" not in json.loads(det.to_json())
    unsure = det.model_copy(update={"status": "uncertain", "trust_score": 0.42})
    back = parse_device_message(unsure.to_json(), "detection")
    assert isinstance(back, Detection)
    assert back.status == "uncertain" and back.trust_score == 0.42 and not back.answered
    assert back.top_k == det.top_k  # the guess is kept for the labeller


def test_verdicts_gate_first_then_threshold() -> None:
    m = _with_trust(RULE)
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4]])
    out = {"familiarity": np.array([[0.9], [0.5], [0.95]]), "leaf": np.array([[0.99], [0.99], [0.1]])}
    assert [v.status for v in verdicts(m, out, probs)] == ["ok", "uncertain", "not_a_leaf"]
    assert verdicts(_with_trust(None), out, probs)[0].status == "ok"


def test_agent_scores_match_the_trainer() -> None:
    logits = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, 0.0]])
    for kind in ("energy", "max_logit"):
        rule = Abstention(score=kind, score_output="logits", threshold=0.0, temperature=1.7)
        np.testing.assert_allclose(trust_scores(rule, np.zeros_like(logits), logits), T.scores(logits, 1.7, kind))


def test_uncertain_samples_go_ahead_of_the_others(tmp_path: Path) -> None:
    from edge_agent.config import SampleSettings
    from edge_agent.outbox import Outbox
    from edge_agent.sampling import SamplePolicy

    box = Outbox(tmp_path / "o.db", budget_bytes=10**7)
    now = 1_000_000.0
    policy = SamplePolicy(SampleSettings(confidence_below=0.5, max_per_hour=10), box, clock=lambda: now)
    # Confident but abstained: still a labelling job; a refused frame never is.
    assert policy.reason(0.99, requested=False, in_batch=0, status="uncertain") == "uncertain"
    assert policy.reason(0.1, requested=False, in_batch=0, status="not_a_leaf") is None
    # At 7 of 10 this hour, low-confidence images stop; the reserved 3 are for uncertain ones.
    box.add([], sample_at=[now - 60] * 7)
    assert policy.reason(0.1, requested=False, in_batch=0) is None
    assert policy.reason(0.99, requested=False, in_batch=2, status="uncertain") == "uncertain"
    assert policy.reason(0.99, requested=False, in_batch=3, status="uncertain") is None


def test_threshold_meets_the_risk_and_leaves_an_ood_margin() -> None:
    score = np.linspace(1.0, 0.0, 100)
    correct = np.ones(100, bool)
    correct[[60, 70, 80, 90]] = False  # errors among the least familiar
    thr = T.choose_threshold(score, correct, target_risk=0.0, max_coverage=0.95)
    assert thr == pytest.approx(score[59])  # the 60 most familiar are all right
    assert T.choose_threshold(score, np.ones(100, bool), 0.03, 0.95) == pytest.approx(score[94])
    cov, risk, aurc = T.risk_coverage(score, correct)
    assert cov[-1] == 1.0 and risk[-1] == pytest.approx(0.04) and 0 < aurc < 0.04


def test_migration_10_adds_the_status_columns_to_an_older_database(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    migrate(engine, target=5)
    with engine.begin() as conn:  # what a database made before step 10 looks like
        conn.execute(text("ALTER TABLE detections DROP COLUMN status"))
        conn.execute(text("ALTER TABLE detections DROP COLUMN trust_score"))
    assert 10 in migrate(engine)  # with whatever other steps came after 5
    cols = {c["name"] for c in inspect(engine).get_columns("detections")}
    assert {"status", "trust_score"} <= cols


def test_balanced_sampler_evens_classes_and_draws_field_photos_at_their_share() -> None:
    from cloud_trainer.disease.dataset import Sample
    from cloud_trainer.disease.field_aug import BalancedSampler, FieldRecipe

    samples = [Sample(Path(f"a{i}"), "a", f"a{i}", "lab") for i in range(90)]
    samples += [Sample(Path(f"b{i}"), "b", f"b{i}", "lab") for i in range(10)]
    samples += [Sample(Path(f"f{i}"), "a", f"f{i}", "field") for i in range(5)]
    sampler = BalancedSampler(samples, FieldRecipe(field_share=0.3), num_replicas=1, rank=0, seed=0)
    drawn = []
    for epoch in range(40):
        sampler.set_epoch(epoch)
        drawn += [samples[i] for i in sampler]
    field = sum(s.domain == "field" for s in drawn) / len(drawn)
    lab_b = sum(s.label == "b" for s in drawn if s.domain == "lab") / sum(s.domain == "lab" for s in drawn)
    assert abs(field - 0.3) < 0.03 and abs(lab_b - 0.5) < 0.05
    sampler.set_epoch(0)
    assert list(sampler) == list(sampler)  # the same epoch draws the same order (resume)


def test_paste_on_background_replaces_the_backdrop_and_keeps_the_leaf() -> None:
    from cloud_trainer.disease.field_aug import paste_on_background

    img = np.full((64, 64, 3), 200, np.uint8)  # a plain lab backdrop ...
    img[16:48, 16:48] = (40, 140, 40)  # ... and a green leaf
    out = paste_on_background(img, np.random.default_rng(0))
    assert np.abs(out[30, 30].astype(int) - (40, 140, 40)).max() <= 3
    assert np.abs(out[2, 2].astype(int) - 200).max() > 20
