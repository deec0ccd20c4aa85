from __future__ import annotations

from pathlib import Path

import numpy as np

from cloud_trainer.disease import metrics as M


def test_metrics_on_a_known_confusion() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    preds = np.array([0, 1, 1, 1, 2, 0])
    probs = np.eye(3)[preds] * 0.7 + 0.1
    m = M.classification_metrics(probs, labels, ["a", "b", "c"])
    assert m["accuracy"] == 4 / 6
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["per_class"]["b"]["precision"] == 2 / 3 and m["per_class"]["b"]["recall"] == 1.0
    f1 = [2 * 0.5 * 0.5 / 1.0, 2 * (2 / 3) / (5 / 3), 2 * 0.5 / 1.5]
    assert abs(m["macro_f1"] - np.mean(f1)) < 1e-12


def test_ece_zero_when_confidence_matches_accuracy() -> None:
    probs = np.array([[0.75, 0.25]] * 4)
    assert M.expected_calibration_error(probs, np.array([0, 0, 0, 1])) < 1e-12
    assert abs(M.expected_calibration_error(probs, np.array([1, 1, 1, 1])) - 0.75) < 1e-12


def test_temperature_softens_overconfident_logits() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 400)
    logits = rng.normal(0, 1, (400, 4))
    logits[np.arange(400), labels] += 1.0
    logits *= 6  # confident far beyond the 1-point margin
    t = M.fit_temperature(logits, labels)
    assert t > 2
    assert M.nll(logits, labels, t) < M.nll(logits, labels)
    assert M.expected_calibration_error(M.softmax(logits, t), labels) < M.expected_calibration_error(
        M.softmax(logits), labels
    )


def test_confusion_files(tmp_path: Path) -> None:
    M.write_confusion(tmp_path, np.array([[2, 1], [0, 3]]), ["A___x", "B___y"], "t")
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "confusion_matrix.csv").read_text().splitlines()[1] == "A___x,2,1"
