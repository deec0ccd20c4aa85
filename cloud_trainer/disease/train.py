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
import csv
import datetime as dt
import io
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from shared.fsutil import atomic_write_bytes, atomic_write_text

from . import dataset as ds
from . import metrics as M
from .models import MODEL_REGISTRY, LoadReport, arch_spec, build_model

logger = logging.getLogger(__name__)

TASK = "disease_classification"


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
        "a few hundred photos should adjust ImageNet features, not overwrite them",
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
    p.add_argument("--no-cache", action="store_true", help="do not keep decoded images in memory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


# --- distributed ------------------------------------------------------------------------------


def init_distributed(device_arg: str) -> tuple[int, int, int, torch.device]:
    """rank, world size, local rank and the device; starts the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_arg == "auto":
        device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(device_arg)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=dt.timedelta(minutes=30))
    return rank, world, local, device


def save_checkpoint(path: Path, obj: dict) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _lr_factor(epoch: int, epochs: int, warmup: int) -> float:
    if epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    progress = (epoch - warmup) / max(1, epochs - warmup)
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress))


def _init_from_run(model_pt: Path, arch: str, classes: list[str], drop_rate: float):
    """The network with every weight of an earlier run's model.pt (fine-tuning keeps its head too)."""

    if not model_pt.is_file():
        raise FileNotFoundError(f"--init {model_pt}: no such file (give a finished run's model.pt)")
    blob = torch.load(model_pt, map_location="cpu", weights_only=True)
    if blob.get("arch") != arch:
        raise ValueError(f"--init {model_pt} is a {blob.get('arch')} model; train with --arch {blob.get('arch')}")
    if list(blob["classes"]) != list(classes):
        raise ValueError(
            f"--init {model_pt} was trained on classes {blob['classes']}, the data has {classes}; "
            "fine-tuning keeps the classifier, so the classes must be the same"
        )
    model, _ = build_model(arch, len(classes), "none", drop_rate)
    model.load_state_dict(blob["model"])
    n = len(blob["model"])
    return model, LoadReport(source=f"fine-tune from {model_pt}", loaded=n, total_target=n)


# --- the loop ---------------------------------------------------------------------------------


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    device: torch.device,
    epoch: int,
    amp: bool = False,
    channels_last: bool = False,
    progress: bool = True,
    freeze_bn: bool = False,
) -> dict:
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
    model: nn.Module, loader: DataLoader, device: torch.device, amp: bool = False, channels_last: bool = False
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


def _write_history(run: Path, history: list[dict]) -> None:
    buf = io.StringIO()
    keys = list(history[0]) if history else []
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(history)
    atomic_write_text(run / "history.csv", buf.getvalue())
    M.plot_history(run / "history.png", history)


def main(args: argparse.Namespace) -> int:
    rank, world, _local, device = init_distributed(args.device)
    is_main = rank == 0
    logging.basicConfig(
        level=logging.INFO if is_main else logging.WARNING, format=f"%(asctime)s [rank {rank}] %(message)s"
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = arch_spec(args.arch)
    size = args.image_size or spec.image_size
    cuda = device.type == "cuda"
    amp = args.amp == "on" or (args.amp == "auto" and cuda)
    channels_last = args.channels_last == "on" or (args.channels_last == "auto" and cuda)
    workers = args.workers if args.workers is not None else (4 if cuda else 0)
    progress = is_main and not args.quiet
    run: Path = args.out
    if is_main:
        run.mkdir(parents=True, exist_ok=True)

    data = ds.load_dataset(args.data, min_per_class=args.min_per_class)
    split_path = run / "split.csv"
    resume_path = None
    if args.resume:
        resume_path = run / "checkpoint.pt" if args.resume == "auto" else Path(args.resume)
        if not resume_path.is_file():
            raise FileNotFoundError(f"--resume {args.resume}: no checkpoint at {resume_path}")
    if resume_path is not None and split_path.is_file():
        split = ds.load_split(split_path, data)
    elif args.split is not None:
        if not args.split.is_file():
            raise FileNotFoundError(f"--split {args.split}: no such file")
        split = ds.load_split(args.split, data)
        empty = [k for k in ds.SPLITS if not split[k]]
        if empty:
            raise ds.DatasetError(f"--split {args.split}: the {', '.join(empty)} split(s) are empty")
    else:
        split = ds.stratified_split(data, args.val_frac, args.test_frac, args.seed)
    fp = ds.fingerprint(data)
    config = {
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "task": TASK,
        "image_size": size,
        "device": str(device),
        "world_size": world,
        "amp_bf16": amp,
        "channels_last": channels_last,
        "workers": workers,
        "mean": spec.mean,
        "std": spec.std,
        "torch": torch.__version__,
    }
    if is_main:
        ds.save_split(split_path, split)
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
    if args.init is not None:
        model, load_report = _init_from_run(args.init, args.arch, data.classes, args.drop_rate)
    else:
        model, load_report = build_model(args.arch, len(data.classes), args.pretrained, args.drop_rate)
    if is_main:
        logger.info("%s", load_report.summary())
    model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    c2i = data.class_to_idx
    cache = not args.no_cache
    train_set = ds.make_torch_dataset(split["train"], c2i, size, train=True, cache=cache)
    val_set = ds.make_torch_dataset(split["val"], c2i, size, train=False, cache=cache)
    test_set = ds.make_torch_dataset(split["test"], c2i, size, train=False, cache=cache)
    # One sampler for one process or many: with num_replicas=1 it is a seeded shuffle, so the
    # order of every epoch is fixed by (seed, epoch) and a resumed run sees what it would have.
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=args.seed)
    per_rank = math.ceil(len(train_set) / world)
    loader_kw = {"num_workers": workers, "pin_memory": cuda, "persistent_workers": workers > 0}
    train_loader = DataLoader(
        train_set,
        batch_size=args.batch_size,
        sampler=sampler,
        drop_last=per_rank > args.batch_size,  # BatchNorm cannot train on a last batch of one
        **loader_kw,
    )
    val_loader = DataLoader(val_set, batch_size=args.batch_size * 2, shuffle=False, **loader_kw)
    test_loader = DataLoader(test_set, batch_size=args.batch_size * 2, shuffle=False, **loader_kw)

    train_model: nn.Module = model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    if args.compile:
        train_model = torch.compile(train_model)

    # Scale the learning rate with the global batch so one recipe serves 1 or N processes.
    lr = args.lr * world * args.batch_size / 16
    pretrained = load_report.loaded > 0
    scale = args.backbone_lr_scale if args.backbone_lr_scale is not None else (0.3 if pretrained else 1.0)
    head = list(model.backbone.get_classifier().parameters())
    head_ids = {id(p_) for p_ in head}
    if pretrained and args.init is None:
        # A zero head starts at uniform probabilities (loss ln C) instead of random large logits
        # whose gradients would shake the pretrained features in the first steps.
        for p_ in head:
            nn.init.zeros_(p_)
    groups = [
        {"params": [p_ for p_ in model.parameters() if id(p_) not in head_ids], "lr": lr * scale},
        {"params": head, "lr": lr},
    ]
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: _lr_factor(e, args.epochs, args.warmup_epochs))
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    config.update(
        {
            "lr_head": lr,
            "lr_backbone": lr * scale,
            "pretrained_loaded": load_report.as_dict(),
            "head_zero_init": pretrained and args.init is None,
        }
    )
    if is_main:
        ds.write_json(run / "config.json", config)

    start_epoch, best_loss, bad_epochs, history = 0, float("inf"), 0, []
    if resume_path is not None:
        ckpt = torch.load(resume_path, map_location="cpu", weights_only=False)
        if ckpt["classes"] != data.classes:
            raise ValueError(f"{resume_path} was trained on classes {ckpt['classes']}, the data has {data.classes}")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, best_loss, bad_epochs = ckpt["epoch"] + 1, ckpt["best_loss"], ckpt["bad_epochs"]
        history = ckpt["history"]
        if is_main:
            logger.info(
                "resumed from %s after epoch %d (best val loss %.4f)", resume_path, ckpt["epoch"] + 1, best_loss
            )

    ce = nn.CrossEntropyLoss()
    end_epoch = (
        args.epochs if args.stop_after_epochs is None else min(args.epochs, start_epoch + args.stop_after_epochs)
    )
    for epoch in range(start_epoch, end_epoch):
        if bad_epochs >= args.patience:
            break
        sampler.set_epoch(epoch)
        # Augmentation and dropout draw from the global generator: fix it per epoch for resume.
        torch.manual_seed(args.seed * 100_003 + epoch)
        stats = train_one_epoch(
            train_model,
            criterion,
            optimizer,
            train_loader,
            device,
            epoch + 1,
            amp,
            channels_last,
            progress,
            args.freeze_bn,
        )
        scheduler.step()
        # Every rank evaluates the (small) validation split itself, so all reach the same
        # early-stopping decision without a collective.
        logits, labels = evaluate(model, val_loader, device, amp, channels_last)
        val_loss = float(ce(torch.from_numpy(logits), torch.from_numpy(labels)).item())
        vm = M.classification_metrics(M.softmax(logits), labels, data.classes)
        row = {
            "epoch": epoch + 1,
            "lr": optimizer.param_groups[-1]["lr"],
            **stats,
            "val_loss": val_loss,
            "val_accuracy": vm["accuracy"],
            "val_macro_f1": vm["macro_f1"],
        }
        history.append(row)
        improved = val_loss < best_loss - 1e-4
        if improved:
            best_loss, bad_epochs = val_loss, 0
        else:
            bad_epochs += 1
        if is_main:
            logger.info(
                "epoch %d/%d  train loss %.4f  val loss %.4f  val acc %.3f  val macro-F1 %.3f  %.1f img/s%s",
                epoch + 1,
                args.epochs,
                stats["train_loss"],
                val_loss,
                vm["accuracy"],
                vm["macro_f1"],
                stats["train_images_per_s"] * world,
                "  (best)" if improved else "",
            )
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            if improved:
                save_checkpoint(run / "best.pt", {"model": state, "epoch": epoch, "val_loss": val_loss})
            save_checkpoint(
                run / "checkpoint.pt",
                {
                    "model": state,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch,
                    "best_loss": best_loss,
                    "bad_epochs": bad_epochs,
                    "history": history,
                    "classes": data.classes,
                    "arch": args.arch,
                },
            )
            _write_history(run, history)
        if bad_epochs >= args.patience and is_main:
            logger.info("early stop: no better validation loss for %d epochs", args.patience)

    if world > 1:
        dist.barrier()
    stopped_early = bad_epochs >= args.patience
    if end_epoch < args.epochs and not stopped_early:
        if is_main:
            logger.info("paused after epoch %d of %d; continue with --resume auto", end_epoch, args.epochs)
    elif is_main:
        finish(run, model, data, fp, spec, size, config, load_report, val_loader, test_loader, device, history)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return 0


def finish(run, model, data, fp, spec, size, config, load_report, val_loader, test_loader, device, history) -> None:
    """Best weights -> temperature on validation -> test metrics and report -> model.pt and run.json."""
    best = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(best["model"])
    model.to(device)
    val_logits, val_labels = evaluate(model, val_loader, device)
    test_logits, test_labels = evaluate(model, test_loader, device)
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
    ds.write_json(eval_dir / "metrics.json", summary)
    np.savez(eval_dir / "test_logits.npz", logits=test_logits, labels=test_labels)
    extra = {
        "architecture": spec.name,
        "data": f"{data.root} ({len(data.samples)} images, {len(data.classes)} classes, {data.source})",
        "synthetic data": "yes" if data.synthetic else "no",
        "dataset fingerprint": fp,
        "pretrained": load_report.summary(),
        "best epoch": best["epoch"] + 1,
    }
    atomic_write_text(
        eval_dir / "report.md", M.report_markdown(run.name, test_m, val_m, temperature, test_raw["ece"], extra)
    )
    save_checkpoint(
        run / "model.pt",
        {
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "arch": spec.name,
            "classes": data.classes,
            "image_size": size,
            "temperature": temperature,
        },
    )
    run_info = {
        "task": TASK,
        "arch": spec.name,
        "classes": data.classes,
        "image_size": size,
        "temperature": temperature,
        "synthetic": data.synthetic,
        "dataset_fingerprint": fp,
        "data": str(config["data"]),
        # A relative --data is relative to this folder; retraining from this run resolves it here.
        "cwd": os.getcwd(),
        "pretrained": load_report.as_dict(),
        "epochs_run": len(history),
        "best_epoch": best["epoch"] + 1,
        "metrics": {
            "test_accuracy": test_m["accuracy"],
            "test_macro_f1": test_m["macro_f1"],
            "test_ece": test_m["ece"],
            "test_ece_uncalibrated": test_raw["ece"],
            "val_accuracy": val_m["accuracy"],
            "test_images": test_m["n"],
        },
    }
    ds.write_json(run / "run.json", run_info)
    logger.info(
        "test accuracy %.3f  macro-F1 %.3f  ECE %.3f (%.3f before T=%.2f); report in %s",
        test_m["accuracy"],
        test_m["macro_f1"],
        test_m["ece"],
        test_raw["ece"],
        temperature,
        eval_dir / "report.md",
    )


def cli(argv: list[str], prog: str) -> int:
    args = get_args_parser(prog).parse_args(argv)
    try:
        return main(args)
    except (ds.DatasetError, FileNotFoundError, ValueError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # torchrun -m cloud_trainer.disease.train ...
    sys.exit(cli(sys.argv[1:], "cloud_trainer.disease.train"))
