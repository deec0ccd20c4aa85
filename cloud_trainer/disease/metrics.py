"""Classification metrics, calibration, temperature scaling and the evaluation report."""

from __future__ import annotations

import csv
import io
import itertools
import logging
import math
from pathlib import Path

import numpy as np

from shared.fsutil import atomic_write_bytes, atomic_write_text

logger = logging.getLogger(__name__)

# Bounds on the fitted temperature: a validation split of a few dozen images with no mistakes
# would otherwise drive T towards 0 and make every field prediction look certain.
T_MIN, T_MAX = 0.5, 10.0


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    p = softmax(logits, temperature)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, None))))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(conf[in_bin].mean() - correct[in_bin].mean())
    return float(ece)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T minimising validation NLL of softmax(logits / T), by golden-section search on log T."""
    lo, hi = math.log(T_MIN), math.log(T_MAX)
    g = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    for _ in range(60):
        if nll(logits, labels, math.exp(c)) < nll(logits, labels, math.exp(d)):
            b = d
        else:
            a = c
        c, d = b - g * (b - a), a + g * (b - a)
    t = math.exp((a + b) / 2)
    if t <= T_MIN * 1.01 or t >= T_MAX * 0.99:
        logger.warning(
            "temperature %.3f is at its bound [%s, %s]; the validation split may be too small", t, T_MIN, T_MAX
        )
    return float(t)


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, n: int) -> np.ndarray:
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (labels, preds), 1)
    return cm


def classification_metrics(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    preds = probs.argmax(axis=1)
    cm = confusion_matrix(labels, preds, len(classes))
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=(precision + recall) > 0)
    present = support > 0
    return {
        "n": len(labels),
        "accuracy": float((preds == labels).mean()) if len(labels) else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "ece": expected_calibration_error(probs, labels),
        "mean_confidence": float(probs.max(axis=1).mean()) if len(labels) else 0.0,
        "per_class": {
            c: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, c in enumerate(classes)
        },
        "confusion_matrix": cm.tolist(),
    }


def breakdown(probs: np.ndarray, labels: np.ndarray, keys: list[str], classes: list[str]) -> dict[str, dict]:
    """Accuracy, macro-F1 and ECE for each value of ``keys`` (one per image: its domain or source)."""
    arr = np.asarray(keys)
    out = {}
    for value in sorted(set(keys)):
        sel = arr == value
        m = classification_metrics(probs[sel], labels[sel], classes)
        out[value] = {k: m[k] for k in ("n", "accuracy", "macro_f1", "ece", "mean_confidence")}
    return out


def breakdown_markdown(by: dict[str, dict[str, dict]]) -> str:
    """The per-domain and per-source tables of the report ("" when the data has neither column)."""
    lines = []
    for what, table in by.items():
        if not table:
            continue
        lines += [f"| test {what} | images | accuracy | macro-F1 | ECE |", "|---|---|---|---|---|"]
        lines += [
            f"| {v} | {m['n']} | {m['accuracy']:.3f} | {m['macro_f1']:.3f} | {m['ece']:.3f} |" for v, m in table.items()
        ]
        lines.append("")
    return "\n".join(lines)


def write_confusion(out_dir: Path, cm: np.ndarray, classes: list[str], title: str) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["true \\ predicted", *classes])
    for c, row in zip(classes, cm, strict=True):
        w.writerow([c, *row.tolist()])
    atomic_write_text(out_dir / "confusion_matrix.csv", buf.getvalue())

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    fig, ax = plt.subplots(figsize=(max(5, 0.7 * n + 3), max(4, 0.7 * n + 2)))
    ax.imshow(cm, cmap="Blues")
    short = [c.replace("___", ": ").replace("_", " ") for c in classes]
    ax.set_xticks(range(n), short, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), short, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    peak = cm.max() if cm.size else 1
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > peak / 2 else "black")
    fig.tight_layout()
    buf_png = io.BytesIO()
    fig.savefig(buf_png, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(out_dir / "confusion_matrix.png", buf_png.getvalue())


def write_per_class(out_dir: Path, metrics: dict) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["class", "precision", "recall", "f1", "support"])
    for c, m in metrics["per_class"].items():
        w.writerow([c, f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}", m["support"]])
    atomic_write_text(out_dir / "per_class.csv", buf.getvalue())


def plot_history(path: Path, history: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    a1.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    a1.plot(epochs, [h["val_loss"] for h in history], label="val loss")
    a1.set_xlabel("epoch")
    a1.legend()
    a2.plot(epochs, [h["val_accuracy"] for h in history], label="val accuracy")
    a2.plot(epochs, [h["val_macro_f1"] for h in history], label="val macro-F1")
    a2.set_xlabel("epoch")
    a2.set_ylim(0, 1.02)
    a2.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def report_markdown(run_name: str, test: dict, val: dict, temperature: float, ece_raw: float, extra: dict) -> str:
    lines = [
        f"# Evaluation of {run_name}",
        "",
        *(f"- {k}: {v}" for k, v in extra.items()),
        f"- temperature (fitted on validation): {temperature:.3f}",
        "",
        "| split | images | accuracy | macro-F1 | ECE (calibrated) |",
        "|---|---|---|---|---|",
        f"| validation | {val['n']} | {val['accuracy']:.3f} | {val['macro_f1']:.3f} | {val['ece']:.3f} |",
        f"| test | {test['n']} | {test['accuracy']:.3f} | {test['macro_f1']:.3f} | {test['ece']:.3f} |",
        "",
        f"Test ECE before temperature scaling: {ece_raw:.3f}; after: {test['ece']:.3f}.",
        "",
        "| class | precision | recall | support |",
        "|---|---|---|---|",
    ]
    for c, m in test["per_class"].items():
        lines.append(f"| {c} | {m['precision']:.3f} | {m['recall']:.3f} | {m['support']} |")
    lines += ["", "Confusion matrix: confusion_matrix.png / confusion_matrix.csv (rows true, columns predicted).", ""]
    if test["n"] < 50:
        lines.insert(2, f"> Only {test['n']} test images: each one moves accuracy by {100 / test['n']:.1f} points.\n")
    return "\n".join(lines)
