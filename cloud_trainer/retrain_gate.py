"""The evaluation gate of a retraining run: base and candidate on the same two test sets.

Both models are evaluated on the base run's fixed test set and on the held-out field test set,
decoded exactly as a device does. The candidate passes when it is no worse on the fixed set
(within ``--max-regression``) and better on the field set (by more than ``--min-field-gain``, on
at least ``--min-field-test`` images), and its answers on the field set are no less trustworthy:
its confidently-wrong rate (probability >= 0.9 and wrong) and its expected calibration error may
not exceed the base model's (beyond ``--max-trust-regression``). The verdict is written as ``gate/report.json``,
``gate/report.md`` and ``gate/per_class.png``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from .retrain_data import RetrainError

METRICS = ("accuracy", "macro_f1")


@dataclasses.dataclass
class GateResult:
    passed: bool
    metric: str
    reasons: list[str]
    fixed: dict[str, Any]
    field: dict[str, Any]
    thresholds: dict[str, float]
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "metric": self.metric,
            "reasons": self.reasons,
            "thresholds": self.thresholds,
            "fixed_test": self.fixed,
            "field_test": self.field,
            **self.extra,
        }


def evaluate_run(run_dir: Path, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, Any]:
    from .disease import metrics as M
    from .disease.export import load_run, run_torch

    loaded = load_run(run_dir)
    if loaded.classes != classes:
        raise RetrainError(f"{run_dir} predicts {loaded.classes}, expected {classes}")
    probs = run_torch(loaded.model, images)
    m = M.classification_metrics(probs, labels, classes)
    m.pop("confusion_matrix", None)
    wrong = probs.argmax(axis=1) != labels
    m["confidently_wrong"] = float(((probs.max(axis=1) >= 0.9) & wrong).mean()) if len(labels) else 0.0
    return m


def load_images(rows: list[tuple[Path, str]], size: int, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    from shared.image import decode_image

    c2i = {c: i for i, c in enumerate(classes)}
    arrays = [decode_image(p.read_bytes(), size, "center_crop") for p, _ in rows]
    x = np.stack(arrays) if arrays else np.zeros((0, size, size, 3), np.uint8)
    return x, np.array([c2i[label] for _, label in rows], dtype=np.int64)


def decide(
    metric: str,
    fixed: dict[str, dict[str, Any]],
    field_: dict[str, dict[str, Any]],
    max_regression: float,
    min_field_gain: float,
    min_field_test: int = 1,
    max_trust_regression: float = 0.0,
) -> GateResult:
    """Pass when no worse on the fixed test set (within the tolerance) and better on the field test set,
    measured on at least ``min_field_test`` field images, and no less trustworthy on the field set."""
    fb, fc = fixed["base"][metric], fixed["candidate"][metric]
    gb, gc = field_["base"][metric], field_["candidate"][metric]
    reasons = []
    fixed_ok = fc >= fb - max_regression - 1e-12
    enough = field_["candidate"]["n"] >= min_field_test
    field_ok = gc - gb > min_field_gain + 1e-12 and enough
    reasons.append(
        f"fixed test set ({fixed['candidate']['n']} images): {metric} {fb:.4f} -> {fc:.4f} "
        f"({(fc - fb) * 100:+.2f} points); allowed drop {max_regression * 100:.2f} points: "
        + ("ok" if fixed_ok else "FAIL, the candidate forgot what the base model knew")
    )
    reasons.append(
        f"field test set ({field_['candidate']['n']} images): {metric} {gb:.4f} -> {gc:.4f} "
        f"({(gc - gb) * 100:+.2f} points); needs a gain above {min_field_gain * 100:.2f} points: "
        + (
            "ok"
            if field_ok
            else f"FAIL, fewer than {min_field_test} field test images (--min-field-test): too few to tell a gain "
            "from chance; label more samples on the monitor's Detections page"
            if not enough
            else "FAIL, the candidate is not better on the field"
            if gc <= gb
            else "FAIL, the gain on the field is below the minimum"
        )
    )
    trust_ok = True
    for key, what in (("confidently_wrong", "confidently-wrong rate (p >= 0.9 and wrong)"), ("ece", "ECE")):
        if key not in field_["base"] or key not in field_["candidate"]:
            continue
        tb, tc = field_["base"][key], field_["candidate"][key]
        ok = tc <= tb + max_trust_regression + 1e-12
        trust_ok = trust_ok and ok
        reasons.append(
            f"field test set {what}: {tb:.4f} -> {tc:.4f}; allowed rise {max_trust_regression:.4f}: "
            + ("ok" if ok else "FAIL, the candidate's confident answers on the field are less trustworthy")
        )
    return GateResult(
        passed=fixed_ok and field_ok and trust_ok,
        metric=metric,
        reasons=reasons,
        fixed={"base": fixed["base"], "candidate": fixed["candidate"], "delta": fc - fb, "ok": fixed_ok},
        field={"base": field_["base"], "candidate": field_["candidate"], "delta": gc - gb, "ok": field_ok},
        thresholds={
            "max_regression": max_regression,
            "min_field_gain": min_field_gain,
            "min_field_test": min_field_test,
            "max_trust_regression": max_trust_regression,
        },
    )


def gate_markdown(gate: GateResult, title: str) -> str:
    lines = [f"# Evaluation gate: {title}", "", f"**{'PASSED' if gate.passed else 'FAILED'}**", ""]
    lines += [f"- {r}" for r in gate.reasons]
    for name, part in (("Fixed test set", gate.fixed), ("Field test set", gate.field)):
        lines += ["", f"## {name}", "", "| class | base recall | candidate recall | support |", "|---|---|---|---|"]
        for c, b in part["base"]["per_class"].items():
            cand = part["candidate"]["per_class"][c]
            lines.append(f"| {c} | {b['recall']:.3f} | {cand['recall']:.3f} | {b['support']} |")
        lines.append(
            f"| **all** ({gate.metric}) | {part['base'][gate.metric]:.4f} | {part['candidate'][gate.metric]:.4f} | "
            f"{part['base']['n']} |"
        )
    counts = gate.extra.get("counts") or {}
    if counts:
        lines += [
            "",
            "## Data",
            "",
            f"{counts.get('base_images')} base images; {counts.get('field_labels')} field labels: "
            f"{counts.get('field_train')} train (x{counts.get('field_oversample')}), {counts.get('field_val')} val, "
            f"{counts.get('field_test')} field test, {counts.get('field_duplicates')} duplicates of images already "
            f"in the data, {counts.get('field_unknown_class')} of classes the base model does not have",
        ]
    lines.append("")
    lines += [f"- {k}: {v}" for k, v in gate.extra.items() if isinstance(v, (str, int, float))]
    return "\n".join(lines) + "\n"


def gate_plot(path: Path, gate: GateResult) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, (title, part) in zip(axes, (("fixed test set", gate.fixed), ("field test set", gate.field)), strict=True):
        classes = list(part["base"]["per_class"])
        x = np.arange(len(classes))
        base = [part["base"]["per_class"][c]["recall"] for c in classes]
        cand = [part["candidate"]["per_class"][c]["recall"] for c in classes]
        ax.bar(x - 0.2, base, 0.4, label="base")
        ax.bar(x + 0.2, cand, 0.4, label="candidate")
        ax.set_xticks(x, [c.removeprefix("Synthetic_leaf___")[:18] for c in classes], rotation=30, ha="right")
        ax.set_title(f"{title}: {gate.metric} {part['base'][gate.metric]:.3f} -> {part['candidate'][gate.metric]:.3f}")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("recall per class")
    axes[0].legend()
    fig.suptitle(f"evaluation gate {'passed' if gate.passed else 'failed'}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
