"""What a disease run needs before its first epoch: processes and device, data and split, weights, optimiser."""

from __future__ import annotations

import argparse
import datetime as dt
import io
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from shared.fsutil import atomic_write_bytes

from . import dataset as ds
from .models import LoadReport, build_model

logger = logging.getLogger(__name__)


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


def save_checkpoint(path: Path, obj: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def lr_factor(epoch: int, epochs: int, warmup: int) -> float:
    if epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    progress = (epoch - warmup) / max(1, epochs - warmup)
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress))


def resume_path(args: argparse.Namespace) -> Path | None:
    if not args.resume:
        return None
    path = args.out / "checkpoint.pt" if args.resume == "auto" else Path(args.resume)
    if not path.is_file():
        raise FileNotFoundError(f"--resume {args.resume}: no checkpoint at {path}")
    return path


def resolve_split(args: argparse.Namespace, data: ds.LeafDataset, resuming: bool) -> dict[str, list[ds.Sample]]:
    """A resumed run keeps its split.csv; --split names one to reuse; otherwise a fresh stratified split."""
    split_path = args.out / "split.csv"
    if resuming and split_path.is_file():
        return ds.load_split(split_path, data)
    if args.split is None:
        return ds.stratified_split(data, args.val_frac, args.test_frac, args.seed)
    if not args.split.is_file():
        raise FileNotFoundError(f"--split {args.split}: no such file")
    split = ds.load_split(args.split, data)
    empty = [k for k in ds.SPLITS if not split[k]]
    if empty:
        raise ds.DatasetError(f"--split {args.split}: the {', '.join(empty)} split(s) are empty")
    return split


def init_from_run(model_pt: Path, arch: str, classes: list[str], drop_rate: float) -> tuple[nn.Module, LoadReport]:
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


def build_optimizer(
    model: nn.Module, args: argparse.Namespace, world: int, load_report: LoadReport
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, dict[str, Any]]:
    """AdamW with a slower backbone than head, warmup then cosine; and what it chose, for config.json."""
    # Scale the learning rate with the global batch so one recipe serves 1 or N processes.
    lr = args.lr * world * args.batch_size / 16
    pretrained = load_report.loaded > 0
    scale = args.backbone_lr_scale if args.backbone_lr_scale is not None else (0.3 if pretrained else 1.0)
    backbone: Any = model.backbone
    head = list(backbone.get_classifier().parameters())
    head_ids = {id(p_) for p_ in head}
    if pretrained and args.init is None:
        # A zero head starts at uniform probabilities (loss ln C) instead of random large logits
        # whose gradients would shake the pretrained features in the first steps.
        for p_ in head:
            nn.init.zeros_(p_)
    body = [p_ for p_ in model.parameters() if id(p_) not in head_ids]
    if scale == 0:
        # A frozen backbone needs no gradients at all: on a CPU that is most of the work of a step.
        for p_ in body:
            p_.requires_grad_(False)
    groups = [{"params": body, "lr": lr * scale}] if scale else []
    groups.append({"params": head, "lr": lr})
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(e, args.epochs, args.warmup_epochs))
    chosen = {
        "lr_head": lr,
        "lr_backbone": lr * scale,
        "backbone_frozen": scale == 0,
        "pretrained_loaded": load_report.as_dict(),
        "head_zero_init": pretrained and args.init is None,
    }
    return optimizer, scheduler, chosen
