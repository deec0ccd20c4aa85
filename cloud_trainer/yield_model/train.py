"""Train a season yield model, shaped like torchvision's reference scripts.

    cropwatch train yield --cube CUBE.nc [--spec MAP.toml] --output-dir runs/yield1 [--arch cnn|gru|lstm]
    torchrun --nproc-per-node 2 -m cloud_trainer.yield_model.train --cube ... (DDP, gloo on CPU, nccl on GPU)

The run folder gets config.json (task ``yield_forecast``, the resolved config), checkpoint.pt (for
--resume), best.pt, report.json/report.md (network against the baselines), predictions.csv (with the
season progress each prediction reached) and plots/. :mod:`.report` writes everything but the weights.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch
from torch import distributed as dist
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from shared.fsutil import atomic_write_text

from . import baselines
from .cube import SeasonArrays, SeasonCube, load_cube
from .dataset import normalisation, split_indices, tensors
from .errors import UsageError, run_cli
from .models import ARCHS, SeasonNet, YieldLoss, build_model, drop_channels, truncate_seasons, truncate_to
from .report import (
    TASK,
    build_report,
    predict,
    run_config,
    write_predictions,
    write_reference_inputs,
    write_report,
)
from .runtime import init_distributed, pick_device, save_torch, unwrap
from .spec import load_spec

__all__ = ["BEST", "CHECKPOINT", "CONFIG_FILE", "TASK", "evaluate", "get_args_parser", "main", "train_one_epoch"]

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"


class TrainState(TypedDict):
    """Progress of a run, saved in checkpoint.pt for --resume."""

    epoch: int
    best_score: float
    best_epoch: int
    bad_epochs: int
    history: list[dict[str, float]]


@dataclass
class Trainer:
    """What the epoch loop updates: the model (and its DDP wrapper), optimiser, schedule and progress."""

    model: SeasonNet
    ddp_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.CosineAnnealingLR
    criterion: YieldLoss
    generator: torch.Generator
    state: TrainState
    model_args: dict[str, Any]


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


# --- the loop ---------------------------------------------------------------------------------------


def train_one_epoch(
    model: torch.nn.Module,
    criterion: YieldLoss,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader[tuple[torch.Tensor, ...]],
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


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    rank, world = init_distributed(device)
    try:
        return _run(args, device, rank, world)
    finally:
        if world > 1:
            dist.destroy_process_group()


def _model_args(args: argparse.Namespace, cube: SeasonCube, arrays: SeasonArrays) -> dict[str, Any]:
    return {
        "n_channels": arrays.dynamic.shape[2],
        "n_static": arrays.static.shape[1],
        "time_steps": cube.time_steps,
        "arch": args.arch,
        "hidden": args.hidden,
        "quantiles": [float(q) for q in args.quantiles.split(",")],
        "dropout": args.dropout,
        "hist_vars": len(cube.histogram),
        "hist_bins": int(cube.ds.sizes["bin"]) if cube.histogram else 0,
        "wide": not args.no_wide,
        "log_target": args.log_target,
    }


def _trainer(
    args: argparse.Namespace,
    model_args: dict[str, Any],
    norm: dict[str, Any],
    device: torch.device,
    rank: int,
    world: int,
) -> Trainer:
    model = build_model(model_args)
    model.set_normalisation(
        x_mean=np.asarray(norm["x_mean"]),
        x_std=np.asarray(norm["x_std"]),
        s_mean=np.asarray(norm["s_mean"]),
        s_std=np.asarray(norm["s_std"]),
        y_mean=norm["y_mean"],
        y_std=norm["y_std"],
    )
    model.to(device)
    ddp_model: torch.nn.Module = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    return Trainer(
        model=model,
        ddp_model=ddp_model,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(args.epochs, 1)),
        criterion=YieldLoss(model_args["quantiles"]),
        generator=torch.Generator().manual_seed(args.seed * 1000 + rank),
        state={"epoch": 0, "best_score": float("inf"), "best_epoch": 0, "bad_epochs": 0, "history": []},
        model_args=model_args,
    )


def _resume(t: Trainer, ckpt_path: Path, device: torch.device, epochs: int) -> None:
    if not ckpt_path.is_file():
        raise UsageError(f"--resume: no {CHECKPOINT} in {ckpt_path.parent}; drop --resume or fix --output-dir")
    ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
    t.model.load_state_dict(ckpt["model"])
    t.optimizer.load_state_dict(ckpt["optimizer"])
    t.scheduler.load_state_dict(ckpt["scheduler"])
    t.state = ckpt["state"]
    t.generator.set_state(ckpt["generator"])
    torch.set_rng_state(ckpt["torch_rng"])
    # A resumed run may be given more epochs: stretch the cosine over the new total.
    t.scheduler.T_max = max(epochs, 1)
    logger.info("resumed from %s at epoch %d", ckpt_path, t.state["epoch"])


def _save_epoch(t: Trainer, out_dir: Path, improved: bool) -> None:
    epoch = t.state["epoch"]
    if improved:
        save_torch({"model": t.model.state_dict(), "model_args": t.model_args, "epoch": epoch}, out_dir / BEST)
    save_torch(
        {
            "model": t.model.state_dict(),
            "optimizer": t.optimizer.state_dict(),
            "scheduler": t.scheduler.state_dict(),
            "state": t.state,
            "generator": t.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "model_args": t.model_args,
        },
        out_dir / CHECKPOINT,
    )


def _fit(
    t: Trainer,
    args: argparse.Namespace,
    arrays: SeasonArrays,
    split: dict[str, Any],
    device: torch.device,
    out_dir: Path,
    rank: int,
    world: int,
) -> None:
    """The epoch loop: train, score validation, checkpoint (rank 0), stop early without a validation gain."""
    is_main = rank == 0
    points = [float(p) for p in args.progress_points.split(",")]
    train_set = tensors(arrays, split["train"])
    sampler: DistributedSampler[int] | None = None
    if world > 1:
        sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, seed=args.seed)
    order = torch.Generator()
    loader: DataLoader[tuple[torch.Tensor, ...]] = DataLoader(
        train_set,
        batch_size=args.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=order,
        drop_last=len(train_set) > args.batch_size,
    )
    state = t.state
    outer = tqdm(
        range(state["epoch"] + 1, args.epochs + 1), desc="training", disable=not is_main or args.quiet, file=sys.stderr
    )
    for epoch in outer:
        if sampler is not None:
            sampler.set_epoch(epoch)
        # Shuffle order by epoch number, so a resumed run sees the batches an unbroken one would have.
        order.manual_seed(args.seed * 100_003 + epoch)
        show = is_main and not args.quiet
        loss = train_one_epoch(t.ddp_model, t.criterion, t.optimizer, loader, device, epoch, args, t.generator, show)
        t.scheduler.step()
        # Every rank scores the same (small) validation set, so all reach the same stopping decision.
        score = _val_score(evaluate(t.model, arrays, split["val"], device, points))
        state["epoch"] = epoch
        state["history"].append({"epoch": epoch, "train_loss": loss, "val_rmse": score})
        improved = score < state["best_score"] - 1e-9
        if improved:
            state["best_score"], state["best_epoch"], state["bad_epochs"] = score, epoch, 0
        else:
            state["bad_epochs"] += 1
        outer.set_postfix(loss=f"{loss:.4f}", val_rmse=f"{score:.4g}", best=state["best_epoch"])
        if is_main:
            _save_epoch(t, out_dir, improved)
        logger.info("epoch %d: train loss %.4f, val rmse %.4g (best %d)", epoch, loss, score, state["best_epoch"])
        if state["bad_epochs"] >= args.patience:
            logger.info("early stop at epoch %d: no validation gain for %d epochs", epoch, args.patience)
            break


def _finish(
    t: Trainer,
    args: argparse.Namespace,
    cube: SeasonCube,
    arrays: SeasonArrays,
    split: dict[str, Any],
    device: torch.device,
    out_dir: Path,
    started: float,
) -> dict[str, Any]:
    """Rank 0 after training: the best weights scored on test beside the baselines, then run.json."""
    points = [float(p) for p in args.progress_points.split(",")]
    best = torch.load(out_dir / BEST, map_location=device, weights_only=False)
    t.model.load_state_dict(best["model"])
    network = evaluate(t.model, arrays, split["test"], device, points)
    report = build_report(network, t.model, arrays, cube, split, device, points, args, t.state)
    report["train_seconds"] = round(time.time() - started, 2)
    write_report(out_dir, report, cube)
    write_predictions(out_dir, t.model, arrays, split["test"], device, points, cube)
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


def _run(args: argparse.Namespace, device: torch.device, rank: int, world: int) -> dict[str, Any]:
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    is_main = rank == 0
    out_dir = Path(args.output_dir or f"runs/yield-{time.strftime('%Y%m%d-%H%M%S')}")
    out_dir.mkdir(parents=True, exist_ok=True)

    spec = load_spec(args.spec) if args.spec else None
    cube = load_cube(args.cube, spec, lazy=True if args.lazy else None)
    arrays = cube.arrays()
    split = split_indices(arrays, args)
    norm = normalisation(arrays, split["train"], args.log_target)
    model_args = _model_args(args, cube, arrays)
    if is_main:
        config = run_config(args, cube, split, norm, model_args, world)
        atomic_write_text(out_dir / CONFIG_FILE, json.dumps(config, indent=2))
        atomic_write_text(out_dir / "cube_report.json", json.dumps(cube.report, indent=2))

    trainer = _trainer(args, model_args, norm, device, rank, world)
    if args.resume:
        _resume(trainer, out_dir / CHECKPOINT, device, args.epochs)
    started = time.time()
    _fit(trainer, args, arrays, split, device, out_dir, rank, world)
    if world > 1:
        dist.barrier()
    if not is_main:
        return {}
    return _finish(trainer, args, cube, arrays, split, device, out_dir, started)


def _print_summary(report: dict[str, Any]) -> None:
    full = report["full_season"]
    n = report["network"][full]
    print(
        f"test ({report['split'].get('test_year', 'random split')}): network RMSE {n['rmse']:.4g} "
        f"MAE {n['mae']:.4g} R2 {n['r2']:.3f} coverage10-90 {n.get('coverage_10_90', 0):.2f}"
    )
    for name, per in report["baselines"].items():
        b = per[full]
        print(f"  {name:<18} RMSE {b['rmse']:.4g} MAE {b['mae']:.4g} R2 {b['r2']:.3f}")


def main_cli(argv: list[str] | None = None, prog: str = "cropwatch train yield") -> int:
    args = get_args_parser(prog).parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def body() -> int:
        report = main(args)
        if report:
            _print_summary(report)
        return 0

    return run_cli(prog, body)


if __name__ == "__main__":
    sys.exit(main_cli(sys.argv[1:], prog="python -m cloud_trainer.yield_model.train"))
