"""Plots in the run folder: predicted against actual, and error against season progress."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import numpy as np

from shared.fsutil import atomic_write_bytes

logger = logging.getLogger(__name__)


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())


def plot_run(run_dir: str | Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run_dir)
    report = json.loads((run / "report.json").read_text())
    rows = list(csv.DictReader((run / "predictions.csv").open()))
    out_dir = run / "plots"
    out_dir.mkdir(exist_ok=True)
    unit = report.get("target_unit", "")
    written = []

    full = max(float(r["season_progress"]) for r in rows)
    last = [r for r in rows if float(r["season_progress"]) >= full - 1e-6]
    actual = np.array([float(r["actual"]) for r in last])
    expected = np.array([float(r["expected"]) for r in last])
    lo = np.array([float(r["q10"]) for r in last]) if "q10" in last[0] else None
    hi = np.array([float(r["q90"]) for r in last]) if "q90" in last[0] else None
    fig, ax = plt.subplots(figsize=(5.5, 5))
    if lo is not None and hi is not None:
        ax.vlines(actual, lo, hi, colors="0.75", lw=1, label="10-90% interval")
    ax.scatter(actual, expected, s=14, label="network (full season)")
    bounds = [min(actual.min(), expected.min()), max(actual.max(), expected.max())]
    ax.plot(bounds, bounds, "k--", lw=1, label="perfect")
    n = report["network"][report["full_season"]]
    ax.set_title(f"Test set: RMSE {n['rmse']:.3g}, R2 {n['r2']:.2f}, coverage {n.get('coverage_10_90', 0):.2f}")
    ax.set_xlabel(f"actual {report['target']} [{unit}]")
    ax.set_ylabel(f"predicted [{unit}]")
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(out_dir / "pred_vs_actual.png")
    _save(fig, written[-1])
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    fracs = sorted(report["network"], key=float)
    x = [float(f) for f in fracs]
    ax.plot(x, [report["network"][f]["rmse"] for f in fracs], "o-", lw=2, label="network")
    for name, per in report["baselines"].items():
        ax.plot(x, [per[f]["rmse"] for f in fracs], ".--", label=name)
    ax.set_xlabel("season progress (fraction of the season observed)")
    ax.set_ylabel(f"test RMSE [{unit}]")
    ax.set_title("Error against season progress")
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(out_dir / "error_vs_progress.png")
    _save(fig, written[-1])
    plt.close(fig)

    history = report.get("history", [])
    if history:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([h["epoch"] for h in history], [h["train_loss"] for h in history], label="train loss")
        ax2 = ax.twinx()
        ax2.plot([h["epoch"] for h in history], [h["val_rmse"] for h in history], color="C1", label="val RMSE")
        ax.set_xlabel("epoch")
        ax.set_ylabel("train loss")
        ax2.set_ylabel(f"val RMSE [{unit}]")
        fig.legend(fontsize=8)
        fig.tight_layout()
        written.append(out_dir / "training_curve.png")
        _save(fig, written[-1])
        plt.close(fig)
    logger.info("plots written to %s", out_dir)
    return written
