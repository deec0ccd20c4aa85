"""The end of a disease run: best weights, temperature on validation, test report, model.pt and run.json."""

from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from shared.fsutil import atomic_write_text

from . import dataset as ds, metrics as M
from .models import ArchSpec, LoadReport
from .run_setup import save_checkpoint

logger = logging.getLogger(__name__)

TASK = "disease_classification"


@dataclass
class FinishedRun:
    """What training hands to :func:`finish`."""

    run: Path
    data: ds.LeafDataset
    fingerprint: str
    spec: ArchSpec
    size: int
    config: dict[str, Any]
    load_report: LoadReport
    history: list[dict[str, float]]
    # The test split in loader order: its domain and source columns give the per-domain report.
    test_samples: list[ds.Sample] = field(default_factory=list)


def write_history(run: Path, history: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    keys = list(history[0]) if history else []
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(history)
    atomic_write_text(run / "history.csv", buf.getvalue())
    M.plot_history(run / "history.png", history)


Scored = tuple[np.ndarray, np.ndarray]  # logits [N, C], labels [N]


def finish(done: FinishedRun, model: nn.Module, val: Scored, test: Scored, best_epoch: int) -> None:
    """Temperature on validation -> test metrics, report -> model.pt, run.json; ``model`` has the best weights."""
    data, spec, run = done.data, done.spec, done.run
    (val_logits, val_labels), (test_logits, test_labels) = val, test
    temperature = M.fit_temperature(val_logits, val_labels)
    val_m = M.classification_metrics(M.softmax(val_logits, temperature), val_labels, data.classes)
    test_raw = M.classification_metrics(M.softmax(test_logits), test_labels, data.classes)
    test_m = M.classification_metrics(M.softmax(test_logits, temperature), test_labels, data.classes)
    eval_dir = run / "eval"
    eval_dir.mkdir(exist_ok=True)
    M.write_confusion(eval_dir, np.asarray(test_m["confusion_matrix"]), data.classes, f"{spec.name} test split")
    M.write_per_class(eval_dir, test_m)
    summary = {
        "temperature": temperature,
        "val_nll_raw": M.nll(val_logits, val_labels),
        "val_nll_calibrated": M.nll(val_logits, val_labels, temperature),
        "test_ece_raw": test_raw["ece"],
        "test": test_m,
        "val": val_m,
    }
    by = test_breakdown(done.test_samples, M.softmax(test_logits, temperature), test_labels, data.classes)
    summary |= {f"test_by_{k}": v for k, v in by.items() if v}
    ds.write_json(eval_dir / "metrics.json", summary)
    np.savez(eval_dir / "test_logits.npz", logits=test_logits, labels=test_labels)
    extra = {
        "architecture": spec.name,
        "data": f"{data.root} ({len(data.samples)} images, {len(data.classes)} classes, {data.source})",
        "synthetic data": "yes" if data.synthetic else "no",
        "dataset fingerprint": done.fingerprint,
        "pretrained": done.load_report.summary(),
        "best epoch": best_epoch,
    }
    report = M.report_markdown(run.name, test_m, val_m, temperature, test_raw["ece"], extra)
    atomic_write_text(eval_dir / "report.md", report + M.breakdown_markdown(by))
    save_checkpoint(
        run / "model.pt",
        {
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "arch": spec.name,
            "classes": data.classes,
            "image_size": done.size,
            "temperature": temperature,
        },
    )
    metrics = {
        "test_accuracy": test_m["accuracy"],
        "test_macro_f1": test_m["macro_f1"],
        "test_ece": test_m["ece"],
        "test_ece_uncalibrated": test_raw["ece"],
        "val_accuracy": val_m["accuracy"],
        "test_images": test_m["n"],
        **{f"test_accuracy_{k}_{v}": m["accuracy"] for k, table in by.items() for v, m in table.items()},
    }
    ds.write_json(run / "run.json", run_info(done, temperature, best_epoch, metrics))
    logger.info(
        "test accuracy %.3f  macro-F1 %.3f  ECE %.3f (%.3f before T=%.2f); report in %s",
        test_m["accuracy"],
        test_m["macro_f1"],
        test_m["ece"],
        test_raw["ece"],
        temperature,
        eval_dir / "report.md",
    )


def test_breakdown(
    samples: list[ds.Sample], probs: np.ndarray, labels: np.ndarray, classes: list[str]
) -> dict[str, dict[str, dict]]:
    """Test metrics per domain and per source, for data that has those columns (else empty tables)."""
    if len(samples) != len(labels):
        return {"domain": {}, "source": {}}
    return {
        what: M.breakdown(probs, labels, [getattr(s, what) for s in samples], classes)
        if any(getattr(s, what) for s in samples)
        else {}
        for what in ("domain", "source")
    }


def run_info(done: FinishedRun, temperature: float, best_epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
    """run.json: the run's task and what export and retraining read from it."""
    return {
        "task": TASK,
        "arch": done.spec.name,
        "classes": done.data.classes,
        "image_size": done.size,
        "temperature": temperature,
        "synthetic": done.data.synthetic,
        "dataset_fingerprint": done.fingerprint,
        "data": str(done.config["data"]),
        # A relative --data is relative to this folder; retraining from this run resolves it here.
        "cwd": os.getcwd(),
        "pretrained": done.load_report.as_dict(),
        "epochs_run": len(done.history),
        "best_epoch": best_epoch,
        "metrics": metrics,
    }
