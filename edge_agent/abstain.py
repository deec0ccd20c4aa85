"""Abstention on the device: the manifest's OOD score and leaf gate applied to one batch.

The thresholds were chosen on validation data when the model was exported and travel in its
signed manifest (``shared.manifest.Abstention``); the agent only applies them. A model without an
abstention block answers every image, as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.manifest import Abstention, ModelManifest
from shared.messages import DetectionStatus


@dataclass(frozen=True)
class Verdict:
    status: DetectionStatus
    score: float | None


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = np.max(x, axis=1, keepdims=True)
    out: np.ndarray = (top + np.log(np.sum(np.exp(x - top), axis=1, keepdims=True)))[:, 0]
    return out


def trust_scores(rule: Abstention, probs: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """Higher is more familiar; the same definitions as the trainer's (cloud_trainer/disease/trust.py)."""
    if rule.score == "max_prob":
        top: np.ndarray = np.max(probs.astype(np.float64), axis=1)
        return top
    if out is None:
        raise ValueError(f"score {rule.score} needs the model's {rule.score_output!r} output")
    if rule.score == "prototype_cosine":
        return out.astype(np.float64).reshape(len(out), -1)[:, 0]
    z = out.astype(np.float64)
    if rule.score == "max_logit":
        largest: np.ndarray = np.max(z, axis=1)
        return largest
    return rule.temperature * _logsumexp(z / rule.temperature)


def verdicts(manifest: ModelManifest, outputs: dict[str, np.ndarray], probs: np.ndarray) -> list[Verdict]:
    """One verdict per image of the batch: ``ok``, ``uncertain`` or ``not_a_leaf``."""
    rule = manifest.abstention
    if rule is None:
        return [Verdict("ok", None)] * len(probs)
    source = outputs.get(rule.score_output) if rule.score_output else None
    scores = trust_scores(rule, probs, source)
    leaf = outputs.get(rule.leaf_output) if rule.leaf_output else None
    out: list[Verdict] = []
    for i, score in enumerate(scores):
        s = float(score) if np.isfinite(score) else None
        if leaf is not None and float(np.ravel(leaf[i])[-1]) < rule.leaf_threshold:
            out.append(Verdict("not_a_leaf", s))
        elif s is None or s < rule.threshold:
            out.append(Verdict("uncertain", s))
        else:
            out.append(Verdict("ok", s))
    return out
