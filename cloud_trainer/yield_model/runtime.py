"""Where a yield run executes: the device, the process group under torchrun, and checkpoint files."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any, cast

import torch
from torch import distributed as dist

from shared.fsutil import atomic_write_bytes

from .models import SeasonNet

logger = logging.getLogger(__name__)


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
    """The SeasonNet inside a DistributedDataParallel wrapper (or the model itself)."""
    inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    # Every model these runs build is a SeasonNet; DDP's `module` is typed as a plain Module.
    return cast(SeasonNet, inner)


def save_torch(obj: Any, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())
