"""Can the model's confidence be trusted: abstention scores, the threshold, and the trust report.

A score is higher for an image that looks like the training data. The threshold is chosen on the
validation split (never the test split, never field data): the lowest score at which the answered
validation images have at most ``target_risk`` errors, raised if needed so that no more than
``max_coverage`` of validation is answered. The coverage cap is the margin for images unlike
anything in validation: with a small validation split and no errors, a risk-only rule would put the
threshold at the lowest validation score and answer every unfamiliar photo.

The scores match what the agent computes from the exported logits (edge_agent/abstain.py).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np

from shared.fsutil import atomic_write_bytes

from . import metrics as M

logger = logging.getLogger(__name__)

Score = Literal["max_prob", "max_logit", "energy", "prototype_cosine"]
SCORES: tuple[Score, ...] = ("prototype_cosine", "energy", "max_logit", "max_prob")
DEFAULT_SCORE: Score = "prototype_cosine"
TARGET_RISK = 0.03
MAX_COVERAGE = 0.95
CONFIDENT = 0.9


def scores(logits: np.ndarray, temperature: float, kind: Score, familiarity: np.ndarray | None = None) -> np.ndarray:
    """``prototype_cosine`` is the trust head's ``familiarity`` output (trust_head.py), the rest read the logits."""
    if kind == "prototype_cosine":
        if familiarity is None:
            raise ValueError("score prototype_cosine needs the trust head's familiarity; this run has none")
        return np.asarray(familiarity, dtype=np.float64).reshape(-1)
    z = logits.astype(np.float64)
    if kind == "max_prob":
        return M.softmax(z, temperature).max(axis=1)
    if kind == "max_logit":
        return z.max(axis=1)
    top = (z / temperature).max(axis=1, keepdims=True)
    return temperature * (top[:, 0] + np.log(np.exp(z / temperature - top).sum(axis=1)))


def choose_threshold(
    score: np.ndarray, correct: np.ndarray, target_risk: float = TARGET_RISK, max_coverage: float = MAX_COVERAGE
) -> float:
    """The threshold for ``target_risk`` on validation, capped at ``max_coverage`` (module docstring)."""
    if len(score) == 0:
        raise ValueError("no validation images to choose an abstention threshold on")
    order = np.argsort(-score, kind="stable")
    s, c = score[order], correct[order].astype(np.float64)
    risk = np.cumsum(1.0 - c) / np.arange(1, len(s) + 1)
    # Answer the k most familiar images; the largest k whose risk stays within target.
    ok = np.flatnonzero(risk <= target_risk)
    k = int(ok[-1]) + 1 if len(ok) else 1
    k = min(k, max(1, int(np.floor(max_coverage * len(s)))))
    return float(s[k - 1])


def risk_coverage(score: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Coverage and risk when answering the most familiar 1..N images, and the area under the curve (AURC)."""
    if len(score) == 0:
        return np.zeros(0), np.zeros(0), float("nan")
    order = np.argsort(-score, kind="stable")
    wrong = 1.0 - correct[order].astype(np.float64)
    n = np.arange(1, len(score) + 1)
    risk = np.cumsum(wrong) / n
    return n / len(score), risk, float(risk.mean())


def trust_metrics(
    logits: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    rule: dict[str, Any],
    familiarity: np.ndarray | None = None,
) -> dict[str, float]:
    """The figures of the issue for one set of images.

    ``labels`` of -1 mark images of classes the model does not have (an unknown
    crop): every answer on them is wrong, and flagging them is right.
    """
    t, kind, thr = float(rule["temperature"]), rule["score"], float(rule["threshold"])
    probs = M.softmax(logits, t)
    known = labels >= 0
    pred = probs.argmax(axis=1)
    correct = known & (pred == np.where(known, labels, 0))
    sc = scores(logits, t, kind, familiarity)
    answered = sc >= thr
    n = max(len(labels), 1)
    _, _, aurc = risk_coverage(sc, correct)
    out = {
        "n": float(len(labels)),
        "accuracy": float(correct.mean()) if len(labels) else 0.0,
        "confidently_wrong": float(((probs.max(axis=1) >= CONFIDENT) & ~correct).sum() / n),
        "confidently_wrong_answered": float(((probs.max(axis=1) >= CONFIDENT) & ~correct & answered).sum() / n),
        "coverage": float(answered.mean()) if len(labels) else 0.0,
        "flagged": float(1.0 - answered.mean()) if len(labels) else 0.0,
        "accuracy_answered": float(correct[answered].mean()) if answered.any() else float("nan"),
        "wrong_and_answered": float((answered & ~correct).sum() / n),
        "aurc": aurc,
    }
    if known.all() and len(labels):
        m = M.classification_metrics(probs, labels, classes)
        out |= {"macro_f1": m["macro_f1"], "ece": m["ece"]}
    return out


def fit_rule(
    val_logits: np.ndarray,
    val_labels: np.ndarray,
    temperature: float,
    kind: Score = DEFAULT_SCORE,
    familiarity: np.ndarray | None = None,
    target_risk: float = TARGET_RISK,
    max_coverage: float = MAX_COVERAGE,
) -> dict[str, Any]:
    """The abstention block of run.json (and, with the logits output's name, of the manifest)."""
    correct = M.softmax(val_logits, temperature).argmax(axis=1) == val_labels
    sc = scores(val_logits, temperature, kind, familiarity)
    thr = choose_threshold(sc, correct, target_risk, max_coverage)
    answered = sc >= thr
    return {
        "temperature": float(temperature),
        "score": kind,
        "threshold": thr,
        "target_risk": target_risk,
        "validation_coverage": float(answered.mean()),
        "validation_risk": float((~correct[answered]).mean()) if answered.any() else 0.0,
    }


def trust_markdown(by: dict[str, dict[str, float]], rule: dict[str, Any]) -> str:
    lines = [
        "## Trust",
        "",
        f"Abstention: score `{rule['score']}`, threshold {rule['threshold']:.4g} chosen on validation for "
        f"risk <= {rule['target_risk']:.0%} (validation coverage {rule['validation_coverage']:.1%}, "
        f"risk {rule['validation_risk']:.1%}); temperature {rule['temperature']:.3f}.",
        "",
        "| set | images | accuracy | macro-F1 | ECE | confidently wrong (p>=0.9) | ... and answered | coverage "
        "| accuracy answered | wrong and answered | AURC |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in by.items():
        lines.append(
            f"| {name} | {int(m['n'])} | {m['accuracy']:.3f} | {_f(m.get('macro_f1'))} | {_f(m.get('ece'))} | "
            f"{m['confidently_wrong']:.3f} | {m['confidently_wrong_answered']:.3f} | {m['coverage']:.3f} | "
            f"{_f(m['accuracy_answered'])} | "
            f"{m['wrong_and_answered']:.3f} | {_f(m['aurc'])} |"
        )
    lines += ["", "Risk-coverage curves: risk_coverage.png.", ""]
    return "\n".join(lines)


def _f(v: float | None) -> str:
    return "-" if v is None or not np.isfinite(v) else f"{v:.3f}"


def plot_risk_coverage(
    path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], rule: dict[str, Any], title: str
) -> None:
    """One risk-coverage curve per set, with the manifest threshold's operating point marked."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, (cov, risk) in curves.items():
        if len(cov):
            ax.plot(cov, risk, label=name)
    ax.axhline(rule["target_risk"], color="grey", ls=":", lw=1, label=f"target risk {rule['target_risk']:.0%}")
    ax.set_xlabel("coverage (share answered, most familiar first)")
    ax.set_ylabel("risk (error rate among answered)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


# A set: (logits, labels, familiarity or None); labels -1 for classes the model does not have.
TrustSet = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]


def trust_report(
    out_dir: Path,
    sets: dict[str, TrustSet],
    classes: list[str],
    rule: dict[str, Any],
    title: str,
) -> tuple[dict[str, dict[str, float]], str]:
    """Metrics per set (a domain, a data folder), the risk-coverage plot, and the markdown section."""
    by: dict[str, dict[str, float]] = {}
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, (logits, labels, fam) in sets.items():
        if len(labels) == 0:
            continue
        by[name] = trust_metrics(logits, labels, classes, rule, fam)
        known = labels >= 0
        correct = known & (M.softmax(logits, rule["temperature"]).argmax(axis=1) == np.where(known, labels, 0))
        cov, risk, _ = risk_coverage(scores(logits, rule["temperature"], rule["score"], fam), correct)
        curves[name] = (cov, risk)
    plot_risk_coverage(out_dir / "risk_coverage.png", curves, rule, title)
    return by, trust_markdown(by, rule)


def add_abstain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--abstain-score",
        choices=["prototype_cosine", "energy", "max_logit", "max_prob"],
        default="prototype_cosine",
        help="the out-of-distribution score the model abstains on (docs/disease-model.md)",
    )
    p.add_argument(
        "--abstain-risk", type=float, default=0.03, help="error rate allowed among answered validation images"
    )
    p.add_argument(
        "--abstain-coverage", type=float, default=0.95, help="at most this share of validation is answered (OOD margin)"
    )
