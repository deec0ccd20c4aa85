"""The cube's arrays as training data: the year split, the normalisation and the tensors."""

from __future__ import annotations

import argparse
import logging
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .cube import SeasonArrays
from .errors import UsageError

logger = logging.getLogger(__name__)


def split_indices(arrays: SeasonArrays, args: argparse.Namespace) -> dict[str, Any]:
    """Earlier years train, the last year tests; validation is a random share of the training years."""
    n = arrays.target.shape[0]
    rng = np.random.default_rng(args.seed)
    how: dict[str, Any]
    if arrays.years is not None and len(np.unique(arrays.years)) > 1:
        test_year = args.test_year if args.test_year is not None else int(arrays.years.max())
        if test_year not in set(arrays.years.tolist()):
            years = sorted(set(arrays.years.tolist()))
            raise UsageError(f"--test-year {test_year} is not in the cube; pick one of its years {years}")
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
        raise UsageError(
            f"only {len(train)} training seasons after the split; the cube is too small "
            "(add samples, or lower --val-fraction / --test-fraction, or pick a later --test-year)"
        )
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
            raise UsageError("--log-target needs every yield > 0; the cube has zero or negative yields (drop the flag)")
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
