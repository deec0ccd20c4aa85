"""The season cube's types: the validated cube, its model-ready arrays, and the error that names a variable.

See :mod:`.cube` for the convention and for loading; :mod:`.cube_align` validates and aligns.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from .spec import CubeSpec

CUBE_ATTR = "cropwatch_cube"
ROLE_ATTR = "cropwatch_role"
ROLES = ("dynamic", "static", "categorical", "histogram", "target", "diagnostic")


class CubeError(ValueError):
    """A season cube that breaks the convention. ``variable`` names the culprit, ``reason`` is a stable code."""

    def __init__(self, reason: str, variable: str | None, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.variable = variable

    def __str__(self) -> str:
        return f"{self.args[0]} [{self.reason}]"


@dataclass
class SeasonArrays:
    """The cube as model-ready numpy arrays; NaN marks a gap or a day not yet observed."""

    dynamic: np.ndarray  # [N, T, C] float32
    static: np.ndarray  # [N, S] float32 (numbers, then one-hot categories)
    target: np.ndarray  # [N] float32
    sample_ids: np.ndarray  # [N] str
    years: np.ndarray | None  # [N] int, or None when the cube has no season year


@dataclass
class SeasonCube:
    """A validated cube in the convention, plus what loading found (gaps, dropped samples)."""

    ds: xr.Dataset
    spec: CubeSpec
    dynamic: list[str]
    static: list[str]
    categorical: dict[str, list[str]]
    histogram: list[str]
    units: dict[str, str]
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def target(self) -> str:
        return self.spec.target_name

    @property
    def target_unit(self) -> str:
        return self.units.get(self.spec.target_name, "")

    @property
    def time_steps(self) -> int:
        return int(self.ds.sizes["time"])

    @property
    def time_step_days(self) -> float:
        return float(self.spec.time_step_days)

    @property
    def n_samples(self) -> int:
        return int(self.ds.sizes["sample"])

    def channel_names(self) -> list[str]:
        """The channels of the season tensor, in order: dynamic variables, then histogram bins."""
        names = list(self.dynamic)
        for h in self.histogram:
            names += [f"{h}[{b}]" for b in range(int(self.ds.sizes["bin"]))]
        return names

    def static_names(self) -> list[str]:
        names = list(self.static)
        for c, levels in self.categorical.items():
            names += [f"{c}={level}" for level in levels]
        return names

    def channel_units(self) -> list[str]:
        units = [self.units.get(v, "") for v in self.dynamic]
        for h in self.histogram:
            units += [self.units.get(h, "")] * int(self.ds.sizes["bin"])
        return units

    def static_units(self) -> list[str]:
        return [self.units.get(v, "") for v in self.static] + ["1"] * sum(len(v) for v in self.categorical.values())

    def arrays(self) -> SeasonArrays:
        ds = self.ds
        n, t = self.n_samples, self.time_steps
        parts = [ds[v].transpose("sample", "time").values.astype(np.float32)[..., None] for v in self.dynamic]
        for h in self.histogram:
            parts.append(ds[h].transpose("sample", "time", "bin").values.astype(np.float32))
        dynamic = np.concatenate(parts, axis=-1) if parts else np.zeros((n, t, 0), np.float32)
        cols = [ds[v].values.astype(np.float32)[:, None] for v in self.static]
        for c, levels in self.categorical.items():
            values = ds[c].values.astype(str)
            cols.append(np.stack([(values == level).astype(np.float32) for level in levels], axis=1))
        static = np.concatenate(cols, axis=1) if cols else np.zeros((n, 0), np.float32)
        years = ds["season_year"].values.astype(np.int64) if "season_year" in ds.coords else None
        return SeasonArrays(
            dynamic=dynamic,
            static=static,
            target=ds[self.target].values.astype(np.float32),
            sample_ids=ds["sample"].values.astype(str),
            years=years,
        )

    def fingerprint(self) -> str:
        """sha256 over the model-ready arrays and their names: the training-data fingerprint."""
        a = self.arrays()
        h = hashlib.sha256()
        h.update("|".join([*self.channel_names(), "#", *self.static_names()]).encode())
        for arr in (a.dynamic, a.static, a.target):
            h.update(np.ascontiguousarray(arr).tobytes())
        h.update("|".join(a.sample_ids.tolist()).encode())
        return "sha256:" + h.hexdigest()
