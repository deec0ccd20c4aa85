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
import torch
from torch import nn

from shared.fsutil import atomic_write_text

from . import dataset as ds, metrics as M, trust as T
from .models import ArchSpec, DiseaseNet, LoadReport
from .run_setup import save_checkpoint
from .trust_head import TrustHead, build_trust_head, features_of

logger = logging.getLogger(__name__)

TASK = "disease_classification"
# P(leaf) below this is `not_a_leaf`: the gate's own decision boundary (balanced classes).
LEAF_THRESHOLD = 0.5


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
    # For the trust head (prototypes, leaf gate) and its familiarity on validation; empty: no head.
    train_samples: list[ds.Sample] = field(default_factory=list)
    val_samples: list[ds.Sample] = field(default_factory=list)


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
    head = _trust_head(done, model)
    rule, trust_by, trust_md = _trust(done, eval_dir, (val, test), temperature, (model, head))
    summary |= {"abstention": rule, "trust": trust_by}
    ds.write_json(eval_dir / "metrics.json", summary)
    np.savez(eval_dir / "test_logits.npz", logits=test_logits, labels=test_labels)
    np.savez(eval_dir / "val_logits.npz", logits=val_logits, labels=val_labels)
    extra = {
        "architecture": spec.name,
        "data": f"{data.root} ({len(data.samples)} images, {len(data.classes)} classes, {data.source})",
        "synthetic data": "yes" if data.synthetic else "no",
        "dataset fingerprint": done.fingerprint,
        "pretrained": done.load_report.summary(),
        "best epoch": best_epoch,
    }
    report = M.report_markdown(run.name, test_m, val_m, temperature, test_raw["ece"], extra)
    atomic_write_text(eval_dir / "report.md", report + M.breakdown_markdown(by) + "\n" + trust_md)
    save_checkpoint(
        run / "model.pt",
        {
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "arch": spec.name,
            "classes": data.classes,
            "image_size": done.size,
            "temperature": temperature,
            **({"trust_head": head.state()} if head is not None else {}),
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
        **{f"test_{k}": v for k, v in trust_by["test"].items() if k in TRUST_KEYS},
    }
    ds.write_json(run / "run.json", run_info(done, temperature, best_epoch, metrics) | {"abstention": rule})
    logger.info(
        "test accuracy %.3f  macro-F1 %.3f  ECE %.3f (%.3f before T=%.2f); report in %s",
        test_m["accuracy"],
        test_m["macro_f1"],
        test_m["ece"],
        test_raw["ece"],
        temperature,
        eval_dir / "report.md",
    )


TRUST_KEYS = ("confidently_wrong", "coverage", "accuracy_answered", "wrong_and_answered", "aurc")


def _trust_head(done: FinishedRun, model: nn.Module) -> TrustHead | None:
    net: nn.Module = getattr(model, "module", model)
    if not done.train_samples or not done.val_samples or not isinstance(net, DiseaseNet):
        return None
    if done.config.get("abstain_score", T.DEFAULT_SCORE) != "prototype_cosine":
        return None
    return build_trust_head(net.cpu().eval(), done.train_samples, done.data.classes, done.size)


def _familiarity(net: nn.Module, head: TrustHead | None, samples: list[ds.Sample], size: int) -> np.ndarray | None:
    if head is None or not samples:
        return None
    inner = getattr(net, "module", net)
    assert isinstance(inner, DiseaseNet)
    feats = features_of(inner, np.stack([ds.eval_array(s, size) for s in samples]))
    with torch.no_grad():
        return head(torch.from_numpy(feats))[0].numpy()[:, 0]


def _trust(
    done: FinishedRun,
    eval_dir: Path,
    scored: tuple[Scored, Scored],
    temperature: float,
    nets: tuple[nn.Module, TrustHead | None],
) -> tuple[dict[str, Any], dict[str, dict[str, float]], str]:
    """The abstention rule from validation, and how it does on the test split and each of its domains."""
    (val, test), (model_net, head), cfg = scored, nets, done.config
    kind = cfg.get("abstain_score") or T.DEFAULT_SCORE
    if kind == "prototype_cosine" and head is None:
        kind = "energy"  # no samples to build the head from (an old caller): the best logit score
    val_fam = _familiarity(model_net, head, done.val_samples, done.size)
    test_fam = _familiarity(model_net, head, done.test_samples, done.size)
    rule = T.fit_rule(
        val[0], val[1], temperature, kind=kind, familiarity=val_fam,
        target_risk=cfg.get("abstain_risk") or T.TARGET_RISK,
        max_coverage=cfg.get("abstain_coverage") or T.MAX_COVERAGE,
    )  # fmt: skip
    if head is not None:
        rule["leaf_threshold"] = LEAF_THRESHOLD
    sets: dict[str, T.TrustSet] = {"test": (test[0], test[1], test_fam)}
    domains = [s.domain for s in done.test_samples] if len(done.test_samples) == len(test[1]) else []
    for d in sorted({x for x in domains if x}):
        sel = np.array([x == d for x in domains])
        sets[f"test, domain {d}"] = (test[0][sel], test[1][sel], test_fam[sel] if test_fam is not None else None)
    by, md = T.trust_report(eval_dir, sets, done.data.classes, rule, f"{done.run.name}: risk-coverage")
    return rule, by, md


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
