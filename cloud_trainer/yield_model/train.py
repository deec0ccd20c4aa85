"""Train a season yield model, shaped like torchvision's reference scripts.

    cropwatch train yield --cube CUBE.nc [--spec MAP.toml] --output-dir runs/yield1 [--arch cnn|gru|lstm]
    torchrun --nproc-per-node 2 -m cloud_trainer.yield_model.train --cube ... (DDP, gloo on CPU, nccl on GPU)

The run folder gets config.json (task ``yield_forecast``, the resolved config), checkpoint.pt (for
--resume), best.pt, report.json/report.md (network against the baselines), predictions.csv (with the
season progress each prediction reached) and plots/.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from tqdm import tqdm

from shared.fsutil import atomic_write_bytes, atomic_write_text

from . import baselines
from .cube import SeasonArrays, SeasonCube, load_cube
from .models import ARCHS, SeasonNet, YieldLoss, build_model, drop_channels, truncate_seasons, truncate_to
from .spec import load_spec

logger = logging.getLogger(__name__)

TASK = "yield_forecast"
CONFIG_FILE = "config.json"
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"


def get_args_parser(prog: str = "cropwatch train yield") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Train a season yield model on a season cube.")
    p.add_argument("--cube", required=True, help="season cube: NetCDF file or Zarr store")
    p.add_argument("--spec", help="mapping spec (TOML) for a cube not in the Cropwatch convention")
    p.add_argument("--output-dir", default=None, help="run folder (default runs/yield-<time>)")
    p.add_argument("--arch", choices=ARCHS, default="cnn")
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--no-wide", action="store_true", help="no linear path from static features to the outputs")
    p.add_argument(
        "--log-target", action="store_true", help="fit log(yield): for multiplicative responses; yields must be > 0"
    )
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--patience", type=int, default=30, help="early stopping: epochs without validation gain")
    p.add_argument("--quantiles", default="0.1,0.5,0.9")
    p.add_argument("--min-progress", type=float, default=0.2, help="earliest random season cut (fraction)")
    p.add_argument("--full-season-prob", type=float, default=0.3, help="share of training seasons left whole")
    p.add_argument(
        "--channel-dropout",
        type=float,
        default=0.2,
        help="chance that a training season loses a whole variable (robustness to devices without that source)",
    )
    p.add_argument(
        "--progress-points", default="0.25,0.5,0.75,1.0", help="season fractions at which val/test are scored"
    )
    p.add_argument("--test-year", type=int, default=None, help="season year held out for test (default: the last)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="random test share when the cube has no years")
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint.pt")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--lazy", action="store_true", help="open the cube with dask even when small")
    return p


# --- distributed -------------------------------------------------------------------------------------


def init_distributed(device: torch.device) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def pick_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device(f"cuda:{local}")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def unwrap(model: torch.nn.Module) -> SeasonNet:
    return model.module if hasattr(model, "module") else model  # type: ignore[return-value]


# --- data -------------------------------------------------------------------------------------------


def split_indices(arrays: SeasonArrays, args: argparse.Namespace) -> dict[str, Any]:
    """Earlier years train, the last year tests; validation is a random share of the training years."""
    n = arrays.target.shape[0]
    rng = np.random.default_rng(args.seed)
    if arrays.years is not None and len(np.unique(arrays.years)) > 1:
        test_year = args.test_year if args.test_year is not None else int(arrays.years.max())
        if test_year not in set(arrays.years.tolist()):
            raise SystemExit(f"--test-year {test_year} is not in the cube (years: {sorted(set(arrays.years))})")
        test = np.flatnonzero(arrays.years == test_year)
        rest = np.flatnonzero(arrays.years < test_year)
        how = {"by": "year", "test_year": test_year, "train_years": sorted({int(y) for y in arrays.years[rest]})}
    else:
        perm = rng.permutation(n)
        n_test = max(1, round(args.test_fraction * n))
        test, rest = np.sort(perm[:n_test]), perm[n_test:]
        how = {"by": "random", "test_fraction": args.test_fraction}
    rest = rng.permutation(rest)
    n_val = max(1, round(args.val_fraction * len(rest)))
    val, train = np.sort(rest[:n_val]), np.sort(rest[n_val:])
    if len(train) < 2:
        raise SystemExit(f"only {len(train)} training seasons after the split; the cube is too small")
    return {"train": train, "val": val, "test": test, **how}


def normalisation(arrays: SeasonArrays, train: np.ndarray, log_target: bool = False) -> dict[str, Any]:
    x = arrays.dynamic[train]
    s = arrays.static[train]
    x_mean = np.nan_to_num(np.nanmean(x, axis=(0, 1)))
    x_std = np.nan_to_num(np.nanstd(x, axis=(0, 1)), nan=1.0)
    s_mean = np.nan_to_num(np.nanmean(s, axis=0)) if s.shape[1] else np.zeros(0)
    s_std = np.nan_to_num(np.nanstd(s, axis=0), nan=1.0) if s.shape[1] else np.ones(0)
    # A constant channel would divide by zero inside the graph; scale 1 leaves it centred and harmless.
    x_std = np.where(x_std > 1e-6, x_std, 1.0)
    s_std = np.where(s_std > 1e-6, s_std, 1.0)
    y = arrays.target[train].astype(np.float64)
    if log_target:
        if (arrays.target <= 0).any():
            raise SystemExit("--log-target needs every yield > 0; the cube has zero or negative yields")
        y = np.log(y)
    return {
        "x_mean": x_mean.astype(float).tolist(),
        "x_std": x_std.astype(float).tolist(),
        "s_mean": s_mean.astype(float).tolist(),
        "s_std": s_std.astype(float).tolist(),
        "y_mean": float(y.mean()),
        "y_std": float(y.std() if y.std() > 1e-6 else 1.0),
    }


def tensors(arrays: SeasonArrays, idx: np.ndarray) -> TensorDataset:
    return TensorDataset(
        torch.from_numpy(arrays.dynamic[idx]),
        torch.from_numpy(arrays.static[idx]),
        torch.from_numpy(arrays.target[idx]),
    )


# --- the loop ---------------------------------------------------------------------------------------


def train_one_epoch(
    model: torch.nn.Module,
    criterion: YieldLoss,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    device: torch.device,
    epoch: int,
    args: argparse.Namespace,
    generator: torch.Generator,
    show_progress: bool = True,
) -> float:
    model.train()
    total, count = 0.0, 0
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not show_progress, file=sys.stderr)
    for season, static, target in bar:
        season = truncate_seasons(season, generator, args.min_progress, args.full_season_prob)
        season = drop_channels(season, generator, args.channel_dropout).to(device)
        static, target = static.to(device), target.to(device)
        # Through the (DDP) wrapper's forward, so gradient sync hooks run; the loss wants the head's raw output.
        raw, _ = model(season, static, normalised=True)
        loss = criterion(unwrap(model), raw, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        total += float(loss.detach()) * target.shape[0]
        count += target.shape[0]
        bar.set_postfix(loss=f"{total / max(count, 1):.4f}")
    return total / max(count, 1)


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


def evaluate(
    model: torch.nn.Module,
    arrays: SeasonArrays,
    idx: np.ndarray,
    device: torch.device,
    points: list[float],
) -> dict[str, dict[str, float]]:
    """Metrics of the network at each season fraction in ``points`` (the rest of the season hidden)."""
    results = {}
    for frac in points:
        season = truncate_to(arrays.dynamic[idx], frac)
        out = predict(model, season, arrays.static[idx], device)
        q = out["quantiles"]
        results[f"{frac:g}"] = baselines.metrics(arrays.target[idx], out["expected"], q[:, 0], q[:, -1])
    return results


def _val_score(per_point: dict[str, dict[str, float]]) -> float:
    return float(np.mean([m["rmse"] for m in per_point.values()]))


def _save_torch(obj: Any, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    rank, world = init_distributed(device)
    is_main = rank == 0
    try:
        return _run(args, device, rank, world, is_main)
    finally:
        if world > 1:
            dist.destroy_process_group()


def _run(args: argparse.Namespace, device: torch.device, rank: int, world: int, is_main: bool) -> dict[str, Any]:
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    out_dir = Path(args.output_dir or f"runs/yield-{time.strftime('%Y%m%d-%H%M%S')}")
    out_dir.mkdir(parents=True, exist_ok=True)
    quantiles = [float(q) for q in args.quantiles.split(",")]
    points = [float(p) for p in args.progress_points.split(",")]

    spec = load_spec(args.spec) if args.spec else None
    cube = load_cube(args.cube, spec, lazy=True if args.lazy else None)
    arrays = cube.arrays()
    split = split_indices(arrays, args)
    norm = normalisation(arrays, split["train"], args.log_target)
    model_args = {
        "n_channels": arrays.dynamic.shape[2],
        "n_static": arrays.static.shape[1],
        "time_steps": cube.time_steps,
        "arch": args.arch,
        "hidden": args.hidden,
        "quantiles": quantiles,
        "dropout": args.dropout,
        "hist_vars": len(cube.histogram),
        "hist_bins": int(cube.ds.sizes["bin"]) if cube.histogram else 0,
        "wide": not args.no_wide,
        "log_target": args.log_target,
    }
    config = _config(args, cube, split, norm, model_args, world)
    if is_main:
        atomic_write_text(out_dir / CONFIG_FILE, json.dumps(config, indent=2))
        atomic_write_text(out_dir / "cube_report.json", json.dumps(cube.report, indent=2))

    model = build_model(model_args)
    model.set_normalisation(**{k: np.asarray(v) if isinstance(v, list) else v for k, v in norm.items()})
    model.to(device)
    ddp_model: torch.nn.Module = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(args.epochs, 1))
    criterion = YieldLoss(quantiles)
    state = {"epoch": 0, "best_score": float("inf"), "best_epoch": 0, "bad_epochs": 0, "history": []}
    generator = torch.Generator().manual_seed(args.seed * 1000 + rank)
    ckpt_path = out_dir / CHECKPOINT
    if args.resume:
        if not ckpt_path.is_file():
            raise SystemExit(f"--resume: no {CHECKPOINT} in {out_dir}")
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        state = ckpt["state"]
        generator.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["torch_rng"])
        # A resumed run may be given more epochs: stretch the cosine over the new total.
        scheduler.T_max = max(args.epochs, 1)
        logger.info("resumed from %s at epoch %d", ckpt_path, state["epoch"])

    train_set = tensors(arrays, split["train"])
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, seed=args.seed) if world > 1 else None
    loader = DataLoader(
        train_set,
        batch_size=args.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=torch.Generator(),
        drop_last=len(train_set) > args.batch_size,
    )
    started = time.time()
    epochs = range(state["epoch"] + 1, args.epochs + 1)
    outer = tqdm(epochs, desc="training", disable=not is_main or args.quiet, file=sys.stderr)
    for epoch in outer:
        if sampler is not None:
            sampler.set_epoch(epoch)
        # Shuffle order by epoch number, so a resumed run sees the batches an unbroken one would have.
        loader.generator.manual_seed(args.seed * 100_003 + epoch)
        loss = train_one_epoch(
            ddp_model, criterion, optimizer, loader, device, epoch, args, generator, is_main and not args.quiet
        )
        scheduler.step()
        # Every rank scores the same (small) validation set, so all reach the same stopping decision.
        val = evaluate(model, arrays, split["val"], device, points)
        score = _val_score(val)
        state["epoch"] = epoch
        state["history"].append({"epoch": epoch, "train_loss": loss, "val_rmse": score})
        improved = score < state["best_score"] - 1e-9
        if improved:
            state.update(best_score=score, best_epoch=epoch, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        outer.set_postfix(loss=f"{loss:.4f}", val_rmse=f"{score:.4g}", best=state["best_epoch"])
        if is_main:
            if improved:
                _save_torch({"model": model.state_dict(), "model_args": model_args, "epoch": epoch}, out_dir / BEST)
            _save_torch(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "state": state,
                    "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "model_args": model_args,
                },
                ckpt_path,
            )
        logger.info("epoch %d: train loss %.4f, val rmse %.4g (best %d)", epoch, loss, score, state["best_epoch"])
        if state["bad_epochs"] >= args.patience:
            logger.info("early stop at epoch %d: no validation gain for %d epochs", epoch, args.patience)
            break
    if world > 1:
        dist.barrier()
    if not is_main:
        return {}
    best = torch.load(out_dir / BEST, map_location=device, weights_only=False)
    model.load_state_dict(best["model"])
    report = build_report(model, arrays, cube, split, device, points, args, state)
    report["train_seconds"] = round(time.time() - started, 2)
    write_report(out_dir, report, cube)
    write_predictions(out_dir, model, arrays, split["test"], device, points, cube)
    write_reference_inputs(out_dir, arrays, split["test"])
    if not args.no_plots:
        from .plots import plot_run

        plot_run(out_dir)
    # Written last: `cropwatch export` takes a run folder with run.json as a finished run.
    run_info = {
        "task": TASK,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "test": report.get("test"),
    }
    atomic_write_text(out_dir / "run.json", json.dumps(run_info, indent=2, default=str))
    return report


def _config(args, cube: SeasonCube, split, norm, model_args, world: int) -> dict[str, Any]:
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


def build_report(model, arrays, cube, split, device, points, args, state) -> dict[str, Any]:
    train, test = split["train"], split["test"]
    network = evaluate(model, arrays, test, device, points)
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
    verdict = {}
    for name in baselines.BASELINES:
        b, n = base[name][full], network[full]
        verdict[name] = {
            "rmse": n["rmse"] < b["rmse"],
            "mae": n["mae"] < b["mae"],
            "r2": n["r2"] > b["r2"],
        }
    # A device may lack a source: the full-season test error with each variable blanked out.
    without = {}
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


def write_predictions(out_dir: Path, model, arrays: SeasonArrays, idx, device, points, cube: SeasonCube) -> None:
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
    seasons, statics = [], []
    for frac in (0.5, 1.0, 0.25, 0.75):
        seasons.append(truncate_to(arrays.dynamic[chosen], frac))
        statics.append(arrays.static[chosen])
    # Interleave so the first two rows are one half season and one whole season (the self-test pair).
    season = np.stack(seasons, axis=1).reshape(-1, *arrays.dynamic.shape[1:])
    static = np.stack(statics, axis=1).reshape(-1, arrays.static.shape[1])
    buf = io.BytesIO()
    np.savez(buf, season=season.astype(np.float32), static=static.astype(np.float32))
    atomic_write_bytes(out_dir / "reference_inputs.npz", buf.getvalue())


def main_cli(argv: list[str] | None = None, prog: str = "cropwatch train yield") -> int:
    args = get_args_parser(prog).parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    report = main(args)
    if report:
        full = report["full_season"]
        n = report["network"][full]
        print(
            f"test ({report['split'].get('test_year', 'random split')}): network RMSE {n['rmse']:.4g} "
            f"MAE {n['mae']:.4g} R2 {n['r2']:.3f} coverage10-90 {n.get('coverage_10_90', 0):.2f}"
        )
        for name, per in report["baselines"].items():
            b = per[full]
            print(f"  {name:<18} RMSE {b['rmse']:.4g} MAE {b['mae']:.4g} R2 {b['r2']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main_cli(sys.argv[1:], prog="python -m cloud_trainer.yield_model.train"))
