"""What a finished yield run writes beside its weights: config, report against the baselines, predictions.

Also the reference inputs: real test seasons cut at several points, from which export checks parity
and takes the self-test vector.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.fsutil import atomic_write_bytes, atomic_write_text

from . import baselines
from .cube import SeasonArrays, SeasonCube
from .models import truncate_to
from .runtime import unwrap

logger = logging.getLogger(__name__)

TASK = "yield_forecast"
# Every fraction of the season a reference season is cut at; the first two rows are the self-test pair.
REFERENCE_FRACTIONS = (0.5, 1.0, 0.25, 0.75)


@torch.no_grad()
def predict(
    model: torch.nn.Module, season: np.ndarray, static: np.ndarray, device: torch.device, batch: int = 256
) -> dict[str, np.ndarray]:
    net = unwrap(model)
    net.eval()
    outs: dict[str, list[np.ndarray]] = {"expected": [], "quantiles": [], "progress": []}
    for i in range(0, season.shape[0], batch):
        s = torch.from_numpy(season[i : i + batch]).to(device)
        st = torch.from_numpy(static[i : i + batch]).to(device) if net.n_static else None
        e, q, p = net(s, st)
        outs["expected"].append(e.cpu().numpy())
        outs["quantiles"].append(q.cpu().numpy())
        outs["progress"].append(p.cpu().numpy())
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in outs.items()}


def run_config(
    args: argparse.Namespace,
    cube: SeasonCube,
    split: dict[str, Any],
    norm: dict[str, Any],
    model_args: dict[str, Any],
    world: int,
) -> dict[str, Any]:
    """config.json: the resolved arguments and everything export needs to describe the model's inputs."""
    return {
        "task": TASK,
        "args": {k: v for k, v in vars(args).items() if k not in ("func",)},
        "cube": str(Path(args.cube).resolve()),
        "spec": cube.spec.model_dump(mode="json"),
        "channels": cube.channel_names(),
        "channel_units": cube.channel_units(),
        "static": cube.static_names(),
        "static_units": cube.static_units(),
        "static_categorical": [c for c in cube.categorical],
        "target": cube.target,
        "target_unit": cube.target_unit,
        "time_steps": cube.time_steps,
        "time_step_days": cube.time_step_days,
        "align": cube.spec.align,
        "quantiles": model_args["quantiles"],
        "model": model_args,
        "normalisation": norm,
        "split": {
            k: (v.tolist() if isinstance(v, np.ndarray) else v)
            for k, v in split.items()
            if k not in ("train", "val", "test")
        }
        | {"n_train": len(split["train"]), "n_val": len(split["val"]), "n_test": len(split["test"])},
        "test_samples": [str(s) for s in cube.ds["sample"].values[split["test"]]],
        "training_data_fingerprint": cube.fingerprint(),
        "world_size": world,
        "synthetic": bool(cube.ds.attrs.get("synthetic", "") == "1"),
        "source_attrs": {k: str(v) for k, v in cube.ds.attrs.items()},
    }


def build_report(
    network: dict[str, dict[str, float]],
    model: torch.nn.Module,
    arrays: SeasonArrays,
    cube: SeasonCube,
    split: dict[str, Any],
    device: torch.device,
    points: list[float],
    args: argparse.Namespace,
    state: Mapping[str, Any],
) -> dict[str, Any]:
    """The network's test metrics (``network``, at each season fraction in ``points``) beside the baselines."""
    train, test = split["train"], split["test"]
    base: dict[str, dict[str, dict[str, float]]] = {name: {} for name in baselines.BASELINES}
    for frac in points:
        tr_x = truncate_to(arrays.dynamic[train], frac)
        te_x = truncate_to(arrays.dynamic[test], frac)
        for name in baselines.BASELINES:
            pred = baselines.fit_predict(
                name, tr_x, arrays.static[train], arrays.target[train], te_x, arrays.static[test], args.seed
            )
            base[name][f"{frac:g}"] = baselines.metrics(arrays.target[test], pred)
    full = f"{max(points):g}"
    verdict: dict[str, dict[str, bool]] = {}
    for name in baselines.BASELINES:
        b, n = base[name][full], network[full]
        verdict[name] = {
            "rmse": n["rmse"] < b["rmse"],
            "mae": n["mae"] < b["mae"],
            "r2": n["r2"] > b["r2"],
        }
    # A device may lack a source: the full-season test error with each variable blanked out.
    without: dict[str, float] = {}
    n_plain = len(cube.dynamic)
    for c, name in enumerate(cube.channel_names()[:n_plain]):
        season = arrays.dynamic[test].copy()
        season[:, :, c] = np.nan
        out = predict(model, season, arrays.static[test], device)
        without[name] = baselines.metrics(arrays.target[test], out["expected"])["rmse"]
    return {
        "network_rmse_without_variable": without,
        "task": TASK,
        "target": cube.target,
        "target_unit": cube.target_unit,
        "split": {k: v for k, v in split.items() if k not in ("train", "val", "test")}
        | {"n_train": len(split["train"]), "n_val": len(split["val"]), "n_test": len(test)},
        "arch": args.arch,
        "epochs_run": state["epoch"],
        "best_epoch": state["best_epoch"],
        "history": state["history"],
        "full_season": full,
        "network": network,
        "baselines": base,
        "network_beats": verdict,
        "coverage_10_90": network[full].get("coverage_10_90"),
        "cube": cube.report,
    }


def write_report(out_dir: Path, report: dict[str, Any], cube: SeasonCube) -> None:
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2))
    unit = report["target_unit"]
    full = report["full_season"]
    lines = [
        f"# Yield model report ({report['arch']})",
        "",
        f"Target: {report['target']} [{unit}]; split: {json.dumps(report['split'])}",
        f"Epochs run: {report['epochs_run']}, best epoch: {report['best_epoch']}",
        "",
        f"## Test set, full season (progress {full})",
        "",
        "| model | RMSE | MAE | R2 | 10-90 coverage |",
        "|---|---|---|---|---|",
    ]
    n = report["network"][full]
    lines.append(
        f"| network | {n['rmse']:.4g} | {n['mae']:.4g} | {n['r2']:.3f} | {n.get('coverage_10_90', float('nan')):.2f} |"
    )
    for name, per in report["baselines"].items():
        b = per[full]
        lines.append(f"| {name} | {b['rmse']:.4g} | {b['mae']:.4g} | {b['r2']:.3f} | |")
    lines += ["", "## Does the network beat each baseline (full season)?", ""]
    for name, v in report["network_beats"].items():
        lines.append(
            f"- {name}: RMSE {'yes' if v['rmse'] else 'no'}, MAE {'yes' if v['mae'] else 'no'}, "
            f"R2 {'yes' if v['r2'] else 'no'}"
        )
    lines += ["", "## RMSE against season progress (test set)", "", "| progress | network | "]
    lines[-1] += " | ".join(report["baselines"]) + " |"
    lines.append("|---" * (2 + len(report["baselines"])) + "|")
    for frac in report["network"]:
        row = [frac, f"{report['network'][frac]['rmse']:.4g}"]
        row += [f"{report['baselines'][b][frac]['rmse']:.4g}" for b in report["baselines"]]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Network test RMSE (full season) with one variable missing throughout", ""]
    lines += [f"- without {k}: {v:.4g}" for k, v in report.get("network_rmse_without_variable", {}).items()]
    gaps = cube.report.get("nan_gaps", {})
    lines += ["", "## Gaps in the cube (masked, not filled)", ""]
    lines += [f"- {k}: {v['missing']} missing steps ({100 * v['fraction']:.2f}%)" for k, v in gaps.items()]
    lines.append(f"- samples dropped for a missing target: {cube.report.get('samples_without_target', 0)}")
    atomic_write_text(out_dir / "report.md", "\n".join(lines) + "\n")


def write_predictions(
    out_dir: Path,
    model: torch.nn.Module,
    arrays: SeasonArrays,
    idx: np.ndarray,
    device: torch.device,
    points: list[float],
    cube: SeasonCube,
) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    qnames = [f"q{round(q * 100):02d}" for q in unwrap(model).quantiles]
    w.writerow(["sample", "season_year", "season_progress", "days_into_season", "actual", "expected", *qnames])
    for frac in points:
        out = predict(model, truncate_to(arrays.dynamic[idx], frac), arrays.static[idx], device)
        for j, i in enumerate(idx):
            progress = float(out["progress"][j])
            w.writerow(
                [
                    arrays.sample_ids[i],
                    "" if arrays.years is None else int(arrays.years[i]),
                    f"{progress:.4f}",
                    round(progress * cube.time_steps * cube.time_step_days),
                    f"{arrays.target[i]:.4f}",
                    f"{out['expected'][j]:.4f}",
                    *[f"{v:.4f}" for v in out["quantiles"][j]],
                ]
            )
    atomic_write_text(out_dir / "predictions.csv", buf.getvalue())


def write_reference_inputs(out_dir: Path, arrays: SeasonArrays, idx: np.ndarray, n: int = 12) -> None:
    """Real test seasons cut at several points: export checks parity and takes its self-test vector here."""
    chosen = idx[:n]
    seasons = [truncate_to(arrays.dynamic[chosen], frac) for frac in REFERENCE_FRACTIONS]
    statics = [arrays.static[chosen]] * len(REFERENCE_FRACTIONS)
    # Interleave so the first two rows are one half season and one whole season (the self-test pair).
    # Row counts are explicit: a cube without static inputs has zero static columns, where -1 cannot be inferred.
    rows = len(chosen) * len(REFERENCE_FRACTIONS)
    season = np.stack(seasons, axis=1).reshape(rows, *arrays.dynamic.shape[1:])
    static = np.stack(statics, axis=1).reshape(rows, arrays.static.shape[1])
    buf = io.BytesIO()
    np.savez(buf, season=season.astype(np.float32), static=static.astype(np.float32))
    atomic_write_bytes(out_dir / "reference_inputs.npz", buf.getvalue())
