"""Train a leaf-disease classifier: ``cropwatch train disease`` (shaped like torchvision's references).

One code path for CPU and CUDA, one process or many under ``torchrun`` (DDP with a
DistributedSampler; gloo on CPU, NCCL on CUDA). Rank 0 writes the run folder:

    config.json        the resolved arguments          split.csv        train/val/test assignment
    dataset.json       fingerprint, counts, skipped    history.csv/png  per-epoch metrics
    checkpoint.pt      last epoch (resume from it)     best.pt          best validation loss so far
    model.pt           best weights + temperature      run.json         task, metrics, what export needs
    eval/              report.md, metrics.json, confusion_matrix.png/.csv, per_class.csv
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from . import dataset as ds, metrics as M, trust as T
from .field_aug import BalancedSampler, FieldAugment, add_recipe_args, recipe_of
from .finish import TASK, FinishedRun, finish, write_history
from .models import MODEL_REGISTRY, ArchSpec, arch_spec, build_model
from .run_setup import build_optimizer, init_distributed, init_from_run, resolve_split, resume_path, save_checkpoint

__all__ = ["TASK", "cli", "evaluate", "get_args_parser", "main", "train_one_epoch"]

logger = logging.getLogger(__name__)

Loader = DataLoader[tuple[torch.Tensor, int]]


def get_args_parser(prog: str = "cropwatch train disease") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Train a leaf-disease classifier from labelled photos.")
    p.add_argument("--data", required=True, type=Path, help="folder of class folders, or a path,label CSV")
    p.add_argument("--arch", default="tf_efficientnet_lite0", choices=sorted(MODEL_REGISTRY))
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--out", required=True, type=Path, help="run folder (created)")
    p.add_argument(
        "--pretrained",
        default="default",
        help="default (offline ImageNet weights for tf_efficientnet_lite0, none otherwise) | none | "
        "offline-lite0 | PATH to a checkpoint | timm:NAME from the timm hub",
    )
    p.add_argument("--image-size", type=int, default=None, help="input side in pixels (default: the arch's)")
    p.add_argument("--batch-size", type=int, default=16, help="per process")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--backbone-lr-scale",
        type=float,
        default=None,
        help="backbone lr = lr x this (default 0.3 with pretrained weights, 1 without): "
        "a few hundred photos should adjust ImageNet features, not overwrite them; 0 freezes the backbone "
        "(only the classifier learns, several times faster on a CPU; pair with --freeze-bn)",
    )
    p.add_argument("--weight-decay", type=float, default=0.02)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--drop-rate", type=float, default=0.2)
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--patience", type=int, default=8, help="stop after this many epochs without a better val loss")
    p.add_argument("--val-frac", type=float, default=0.2)
    p.add_argument("--test-frac", type=float, default=0.2)
    p.add_argument("--min-per-class", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="data-loader workers (default: 4 on CUDA, 0 on CPU)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--amp", choices=["auto", "on", "off"], default="auto", help="bf16 autocast (auto: on for CUDA)")
    p.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto", help="auto: on for CUDA")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--resume", default=None, help="checkpoint to resume from, or 'auto' for OUT/checkpoint.pt")
    p.add_argument(
        "--stop-after-epochs",
        type=int,
        default=None,
        help="end this invocation after N epochs (time-boxed or preemptible jobs); continue with --resume auto",
    )
    p.add_argument(
        "--split",
        type=Path,
        default=None,
        help="a split.csv (split,label,path) to use instead of drawing one: retraining keeps the base run's "
        "test set fixed this way",
    )
    p.add_argument(
        "--init",
        type=Path,
        default=None,
        help="start from a finished run's model.pt, classifier head included (fine-tuning); the classes must match",
    )
    p.add_argument(
        "--freeze-bn",
        action="store_true",
        help="keep BatchNorm statistics as loaded (fine-tuning on a few images of another look must not shift them)",
    )
    T.add_abstain_args(p)
    add_recipe_args(p)
    p.add_argument("--no-cache", action="store_true", help="do not keep decoded images in memory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


# --- the loop ---------------------------------------------------------------------------------------


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Loader,
    device: torch.device,
    epoch: int,
    amp: bool = False,
    channels_last: bool = False,
    progress: bool = True,
    freeze_bn: bool = False,
) -> dict[str, float]:
    from tqdm import tqdm

    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    total_loss, seen, t0 = 0.0, 0, time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch}", unit="batch", leave=False, disable=not progress)
    for images, targets in bar:
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(images)
            loss = criterion(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(targets)
        seen += len(targets)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}")
    elapsed = time.perf_counter() - t0
    return {"train_loss": total_loss / max(1, seen), "train_images_per_s": seen / max(elapsed, 1e-9)}


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Loader, device: torch.device, amp: bool = False, channels_last: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels for every image of ``loader`` (in order)."""
    model.eval()
    all_logits, all_labels = [], []
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(images)
        all_logits.append(logits.float().cpu().numpy())
        all_labels.append(targets.numpy())
    return np.concatenate(all_logits), np.concatenate(all_labels)


@dataclass
class Context:
    """Where and how this process trains: derived once from the arguments and the device."""

    args: argparse.Namespace
    rank: int
    world: int
    device: torch.device
    spec: ArchSpec
    size: int
    amp: bool
    channels_last: bool
    workers: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def run(self) -> Path:
        return Path(self.args.out)


@dataclass
class Progress:
    """The early-stopping state, saved in checkpoint.pt for --resume."""

    start_epoch: int = 0
    best_loss: float = float("inf")
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class Loaders:
    sampler: DistributedSampler[Any]
    train: Loader
    val: Loader
    test: Loader


def _context(args: argparse.Namespace) -> Context:
    rank, world, _local, device = init_distributed(args.device)
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING, format=f"%(asctime)s [rank {rank}] %(message)s"
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = arch_spec(args.arch)
    cuda = device.type == "cuda"
    return Context(
        args=args,
        rank=rank,
        world=world,
        device=device,
        spec=spec,
        size=args.image_size or spec.image_size,
        amp=args.amp == "on" or (args.amp == "auto" and cuda),
        channels_last=args.channels_last == "on" or (args.channels_last == "auto" and cuda),
        workers=args.workers if args.workers is not None else (4 if cuda else 0),
    )


def _config(ctx: Context) -> dict[str, Any]:
    return {
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(ctx.args).items()},
        "task": TASK,
        "image_size": ctx.size,
        "device": str(ctx.device),
        "world_size": ctx.world,
        "amp_bf16": ctx.amp,
        "channels_last": ctx.channels_last,
        "workers": ctx.workers,
        "mean": ctx.spec.mean,
        "std": ctx.spec.std,
        "torch": torch.__version__,
    }


def _loaders(ctx: Context, data: ds.LeafDataset, split: dict[str, list[ds.Sample]]) -> Loaders:
    args, c2i, cache = ctx.args, data.class_to_idx, not ctx.args.no_cache
    recipe = recipe_of(args)
    augment = FieldAugment(recipe) if recipe.any_image_op else None
    train_set = ds.make_torch_dataset(split["train"], c2i, ctx.size, train=True, cache=cache, field=augment)
    val_set = ds.make_torch_dataset(split["val"], c2i, ctx.size, train=False, cache=cache)
    test_set = ds.make_torch_dataset(split["test"], c2i, ctx.size, train=False, cache=cache)
    # One sampler for one process or many: with num_replicas=1 it is a seeded shuffle, so the
    # order of every epoch is fixed by (seed, epoch) and a resumed run sees what it would have.
    sampler: DistributedSampler[Any] = (
        BalancedSampler(split["train"], recipe, ctx.world, ctx.rank, args.seed)
        if recipe.balanced
        else DistributedSampler(train_set, num_replicas=ctx.world, rank=ctx.rank, shuffle=True, seed=args.seed)
    )
    per_rank = math.ceil(len(split["train"]) / ctx.world)
    cuda = ctx.device.type == "cuda"

    def loader(dataset: ds.ImageSet, batch_size: int, **kw: Any) -> Loader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=ctx.workers,
            pin_memory=cuda,
            persistent_workers=ctx.workers > 0,
            **kw,
        )

    return Loaders(
        sampler=sampler,
        # BatchNorm cannot train on a last batch of one.
        train=loader(train_set, args.batch_size, sampler=sampler, drop_last=per_rank > args.batch_size),
        val=loader(val_set, args.batch_size * 2, shuffle=False),
        test=loader(test_set, args.batch_size * 2, shuffle=False),
    )


def _resume(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, ctx: Context, classes: list[str]
) -> Progress:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt["classes"] != classes:
        raise ValueError(f"{path} was trained on classes {ckpt['classes']}, the data has {classes}")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    progress = Progress(ckpt["epoch"] + 1, ckpt["best_loss"], ckpt["bad_epochs"], ckpt["history"])
    if ctx.is_main:
        logger.info("resumed from %s after epoch %d (best val loss %.4f)", path, ckpt["epoch"] + 1, progress.best_loss)
    return progress


def main(args: argparse.Namespace) -> int:
    ctx = _context(args)
    run = ctx.run
    if ctx.is_main:
        run.mkdir(parents=True, exist_ok=True)
    data = ds.load_dataset(args.data, min_per_class=args.min_per_class)
    resume = resume_path(args)
    split = resolve_split(args, data, resuming=resume is not None)
    fp = ds.fingerprint(data)
    config = _config(ctx)
    if ctx.is_main:
        ds.save_split(run / "split.csv", split)
        ds.write_json(run / "dataset.json", ds.dataset_summary(data, fp))
        logger.info(
            "data %s: %d images in %d classes (%s), %d skipped; split train %d / val %d / test %d",
            args.data,
            len(data.samples),
            len(data.classes),
            data.source,
            len(data.skipped),
            *(len(split[k]) for k in ds.SPLITS),
        )

    torch.manual_seed(args.seed)
    model: nn.Module
    if args.init is not None:
        model, load_report = init_from_run(args.init, args.arch, data.classes, args.drop_rate)
    else:
        model, load_report = build_model(args.arch, len(data.classes), args.pretrained, args.drop_rate)
    if ctx.is_main:
        logger.info("%s", load_report.summary())
    model.to(ctx.device)
    if ctx.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loaders = _loaders(ctx, data, split)

    train_model: nn.Module = model
    if ctx.world > 1:
        cuda = ctx.device.type == "cuda"
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[ctx.device.index] if cuda else None)
    if args.compile:
        # torch.compile of a module returns an OptimizedModule (an nn.Module); its stub says only "callable".
        train_model = cast(nn.Module, torch.compile(train_model))
    optimizer, scheduler, chosen = build_optimizer(model, args, ctx.world, load_report)
    config.update(chosen)
    if ctx.is_main:
        ds.write_json(run / "config.json", config)

    progress = Progress()
    if resume is not None:
        progress = _resume(resume, model, optimizer, scheduler, ctx, data.classes)
    end_epoch = (
        args.epochs
        if args.stop_after_epochs is None
        else min(args.epochs, progress.start_epoch + args.stop_after_epochs)
    )
    _fit(ctx, model, train_model, optimizer, scheduler, loaders, data.classes, progress, end_epoch)

    if ctx.world > 1:
        dist.barrier()
    stopped_early = progress.bad_epochs >= args.patience
    if end_epoch < args.epochs and not stopped_early:
        if ctx.is_main:
            logger.info("paused after epoch %d of %d; continue with --resume auto", end_epoch, args.epochs)
    elif ctx.is_main:
        done = FinishedRun(
            run, data, fp, ctx.spec, ctx.size, config, load_report, progress.history, split["test"],
            train_samples=split["train"], val_samples=split["val"],
        )  # fmt: skip
        _finish(done, model, loaders, ctx.device)
    if ctx.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return 0


def _fit(
    ctx: Context,
    model: nn.Module,
    train_model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loaders: Loaders,
    classes: list[str],
    progress: Progress,
    end_epoch: int,
) -> None:
    """Epochs ``progress.start_epoch`` to ``end_epoch``, stopping after ``--patience`` without a better val loss."""
    args = ctx.args
    ce = nn.CrossEntropyLoss()
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    show = ctx.is_main and not args.quiet
    for epoch in range(progress.start_epoch, end_epoch):
        if progress.bad_epochs >= args.patience:
            break
        loaders.sampler.set_epoch(epoch)
        # Augmentation and dropout draw from the global generator: fix it per epoch for resume.
        torch.manual_seed(args.seed * 100_003 + epoch)
        stats = train_one_epoch(
            train_model,
            criterion,
            optimizer,
            loaders.train,
            ctx.device,
            epoch + 1,
            ctx.amp,
            ctx.channels_last,
            show,
            args.freeze_bn,
        )
        scheduler.step()
        # Every rank evaluates the (small) validation split itself, so all reach the same
        # early-stopping decision without a collective.
        logits, labels = evaluate(model, loaders.val, ctx.device, ctx.amp, ctx.channels_last)
        val_loss = float(ce(torch.from_numpy(logits), torch.from_numpy(labels)).item())
        vm = M.classification_metrics(M.softmax(logits), labels, classes)
        row = {"epoch": epoch + 1, "lr": optimizer.param_groups[-1]["lr"], **stats, "val_loss": val_loss}
        row |= {"val_accuracy": vm["accuracy"], "val_macro_f1": vm["macro_f1"]}
        progress.history.append(row)
        improved = val_loss < progress.best_loss - 1e-4
        if improved:
            progress.best_loss, progress.bad_epochs = val_loss, 0
        else:
            progress.bad_epochs += 1
        if ctx.is_main:
            logger.info(
                "epoch %d/%d  train loss %.4f  val loss %.4f  val acc %.3f  val macro-F1 %.3f  %.1f img/s%s",
                epoch + 1,
                args.epochs,
                stats["train_loss"],
                val_loss,
                vm["accuracy"],
                vm["macro_f1"],
                stats["train_images_per_s"] * ctx.world,
                "  (best)" if improved else "",
            )
            _save_epoch(ctx, model, optimizer, scheduler, classes, progress, epoch, improved)
        if progress.bad_epochs >= args.patience and ctx.is_main:
            logger.info("early stop: no better validation loss for %d epochs", args.patience)


def _save_epoch(
    ctx: Context,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    classes: list[str],
    progress: Progress,
    epoch: int,
    improved: bool,
) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if improved:
        save_checkpoint(ctx.run / "best.pt", {"model": state, "epoch": epoch, "val_loss": progress.best_loss})
    save_checkpoint(
        ctx.run / "checkpoint.pt",
        {
            "model": state,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "best_loss": progress.best_loss,
            "bad_epochs": progress.bad_epochs,
            "history": progress.history,
            "classes": classes,
            "arch": ctx.args.arch,
        },
    )
    write_history(ctx.run, progress.history)


def _finish(done: FinishedRun, model: nn.Module, loaders: Loaders, device: torch.device) -> None:
    """The best weights scored on validation (for the temperature) and test, then the run's report files."""
    best = torch.load(done.run / "best.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(best["model"])
    model.to(device)
    val = evaluate(model, loaders.val, device)
    test = evaluate(model, loaders.test, device)
    finish(done, model, val, test, best_epoch=best["epoch"] + 1)


def cli(argv: list[str], prog: str) -> int:
    args = get_args_parser(prog).parse_args(argv)
    try:
        return main(args)
    except (ds.DatasetError, FileNotFoundError, ValueError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # torchrun -m cloud_trainer.disease.train ...
    sys.exit(cli(sys.argv[1:], "cloud_trainer.disease.train"))
