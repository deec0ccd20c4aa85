"""The season cube: load, validate and align a user's xarray Dataset into the Cropwatch convention.

The convention (docs/season-cube.md): dimensions ``sample`` (a field-season or county-season) and
``time`` (steps of ``time_step_days`` days since planting or a season start), time-varying variables
on ``(sample, time)``, histogram variables on ``(sample, time, bin)``, static numbers and categories
on ``(sample,)``, and the target on ``(sample,)`` with its unit. Any other naming is mapped by a
:class:`~cloud_trainer.yield_model.spec.CubeSpec`; nothing is renamed on disk.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .spec import CategoricalMap, CubeSpec, VariableMap

logger = logging.getLogger(__name__)

# Files above this size are opened with dask so validation and alignment never hold them whole.
LAZY_BYTES = 256 * 1024 * 1024
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


# --- reading ------------------------------------------------------------------------------------


def open_dataset(path: str | os.PathLike[str], lazy: bool | None = None) -> xr.Dataset:
    """Open NetCDF or Zarr; with dask (lazy) when asked or when the file is large."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no season cube at {p}")
    is_zarr = p.is_dir() or p.suffix == ".zarr"
    if lazy is None:
        size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
        lazy = size > LAZY_BYTES
    chunks: dict | None = {} if lazy else None
    if is_zarr:
        return xr.open_zarr(p, chunks=chunks)
    ds = xr.open_dataset(p, chunks=chunks)
    return ds if lazy else ds.load()


def write_cube(ds: xr.Dataset, path: str | os.PathLike[str]) -> Path:
    """Write NetCDF (``.nc``) or Zarr (``.zarr`` or a folder); via a temp name, renamed when complete."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    if p.suffix == ".zarr":
        import shutil

        if tmp.exists():
            shutil.rmtree(tmp)
        # Zarr v2: readable by every Zarr library, and its string arrays have a settled encoding.
        ds.to_zarr(tmp, mode="w", zarr_format=2, consolidated=True)
        if p.exists():
            shutil.rmtree(p)
        os.replace(tmp, p)
    else:
        ds.to_netcdf(tmp)
        os.replace(tmp, p)
    return p


def infer_spec(ds: xr.Dataset) -> CubeSpec:
    """The spec of a cube already in the convention: roles from ``cropwatch_role`` or from dims and dtype."""
    target = str(ds.attrs.get("cropwatch_target", "yield"))
    kinds: dict[str, list[dict[str, Any]]] = {"dynamic": [], "static": [], "categorical": [], "histogram": []}
    # Sorted, so the channel order does not depend on how a store orders its variables (Zarr sorts them).
    for name in sorted(str(n) for n in ds.data_vars):
        var = ds[name]
        if name == target:
            continue
        role = var.attrs.get(ROLE_ATTR)
        if role in ("diagnostic", "target"):
            continue
        if role is None:
            dims = set(var.dims)
            if dims == {"sample", "time"}:
                role = "dynamic"
            elif dims == {"sample", "time", "bin"}:
                role = "histogram"
            elif dims == {"sample"}:
                role = "static" if np.issubdtype(var.dtype, np.number) else "categorical"
            elif "sample" not in dims:
                # Grid mappings, time bounds and other per-file metadata: not about any sample.
                logger.info("ignoring %r %s: it does not run along the sample dimension", name, tuple(var.dims))
                continue
            else:
                # Left in so validation reports it with its dims rather than silently dropping it.
                role = "dynamic"
        entry: dict[str, Any] = {"name": name}
        if role == "categorical" and "levels" in var.attrs:
            entry["levels"] = [str(x) for x in np.atleast_1d(var.attrs["levels"])]
        kinds[role].append(entry)
    return CubeSpec.model_validate(
        {
            "target": target,
            "target_name": target,
            "align": ds.attrs.get("align", "days_since_planting"),
            "time_step_days": float(ds.attrs.get("time_step_days", 1.0)),
            **kinds,
        }
    )


def load_cube(
    source: str | os.PathLike[str] | xr.Dataset, spec: CubeSpec | None = None, lazy: bool | None = None
) -> SeasonCube:
    """Open, validate and align a cube; raise :class:`CubeError` naming the variable at fault."""
    ds = source if isinstance(source, xr.Dataset) else open_dataset(source, lazy=lazy)
    spec = spec or infer_spec(ds)
    return _build(ds, spec)


# --- validation and alignment -----------------------------------------------------------------------


def _dims_text(var: xr.DataArray) -> str:
    return "(" + ", ".join(str(d) for d in var.dims) + ")"


def _check_dims(ds: xr.Dataset, spec: CubeSpec, name: str, src: str, want: tuple[str, ...], kind: str) -> None:
    var = ds[src]
    if set(var.dims) == set(want) and len(var.dims) == len(want):
        return
    extra = [d for d in var.dims if d not in want]
    missing_time = spec.time_dim in want and spec.time_dim not in var.dims
    if missing_time and spec.sample_dim in var.dims and len(extra) == 1 and extra[0] != spec.bin_dim:
        raise CubeError(
            "time_axis_mismatch",
            name,
            f"{kind} variable {name!r} (file name {src!r}) runs along time axis {extra[0]!r} "
            f"({var.sizes[extra[0]]} steps), but the season's time axis is {spec.time_dim!r} "
            f"({ds.sizes[spec.time_dim]} steps); resample it onto {spec.time_dim!r} or name its axis in the spec",
        )
    expected = "(" + ", ".join(want) + ")"
    raise CubeError(
        "wrong_dims",
        name,
        f"{kind} variable {name!r} (file name {src!r}) has dims {_dims_text(var)}, expected {expected}; "
        "fix the file or list the variable under the right kind in the mapping spec",
    )


def _require(ds: xr.Dataset, src: str, name: str, reason: str, what: str) -> None:
    if src not in ds.variables:
        available = ", ".join(sorted(str(v) for v in ds.data_vars)) or "none"
        raise CubeError(
            reason,
            name,
            f"{what} {src!r} is not in the cube (variables: {available}); "
            "name it in the mapping spec (see docs/season-cube.md)",
        )


def _valid_count(var: xr.DataArray) -> int:
    if np.issubdtype(var.dtype, np.number) or np.issubdtype(var.dtype, np.datetime64):
        return int(var.notnull().sum().compute() if hasattr(var.data, "dask") else var.notnull().sum())
    values = var.values.astype(str)
    return int(np.sum((values != "") & (values != "nan") & (values != "None")))


def _as_dates(var: xr.DataArray) -> np.ndarray | None:
    values = np.asarray(var.values)
    if np.issubdtype(values.dtype, np.datetime64):
        return values.astype("datetime64[D]")
    if values.dtype == object and values.size and hasattr(values.flat[0], "year"):
        # cftime dates from NetCDF files with non-standard calendars
        return np.array([np.datetime64(f"{d.year:04d}-{d.month:02d}-{d.day:02d}") for d in values.flat]).reshape(
            values.shape
        )
    return None


def _offsets(ds: xr.Dataset, spec: CubeSpec, years: np.ndarray | None) -> tuple[np.ndarray, bool, np.ndarray | None]:
    """Day offsets since the season start per (sample, step), whether all samples share them, and the years."""
    n, t = ds.sizes[spec.sample_dim], ds.sizes[spec.time_dim]
    coord_name = spec.time_coord or (spec.time_dim if spec.time_dim in ds.variables else None)
    if coord_name is None:
        return np.arange(t, dtype=np.float64) * spec.time_step_days, True, years
    _require(ds, coord_name, coord_name, "missing_variable", "time coordinate")
    coord = ds[coord_name]
    if spec.time_dim not in coord.dims or not set(coord.dims) <= {spec.sample_dim, spec.time_dim}:
        raise CubeError(
            "time_axis_mismatch",
            coord_name,
            f"time coordinate {coord_name!r} has dims {_dims_text(coord)}; it must run along the season's time "
            f"axis {spec.time_dim!r}, as ({spec.time_dim},) or ({spec.sample_dim}, {spec.time_dim})",
        )
    coord = coord.transpose(*[d for d in (spec.sample_dim, spec.time_dim) if d in coord.dims])
    dates = _as_dates(coord)
    if dates is None:
        values = np.asarray(coord.values, dtype=np.float64)
        return values, values.ndim == 1, years
    if spec.season_start is None:
        raise CubeError(
            "no_season_start",
            coord_name,
            f"time coordinate {coord_name!r} holds calendar dates; set season_start in the mapping spec "
            "(a variable with each sample's planting date, or a fixed month-day such as '05-01') "
            "so seasons align by days since planting, not by calendar date",
        )
    if spec.fixed_start is not None:
        month, day = spec.fixed_start
        if years is None:
            first = dates[:1] if dates.ndim == 1 else dates[:, 0]
            years = np.broadcast_to(first.astype("datetime64[Y]").astype(int) + 1970, (n,)).copy()
        starts = np.array([np.datetime64(f"{int(y):04d}-{month:02d}-{day:02d}") for y in years])
    else:
        _require(ds, spec.season_start, spec.season_start, "missing_variable", "season start variable")
        start_var = ds[spec.season_start]
        if start_var.dims != (spec.sample_dim,):
            raise CubeError(
                "wrong_dims",
                spec.season_start,
                f"season start {spec.season_start!r} has dims {_dims_text(start_var)}, expected ({spec.sample_dim},)",
            )
        starts = _as_dates(start_var)
        if starts is None:
            raise CubeError("wrong_dims", spec.season_start, f"season start {spec.season_start!r} does not hold dates")
        if years is None:
            years = starts.astype("datetime64[Y]").astype(int) + 1970
    grid = dates[None, :] if dates.ndim == 1 else dates
    offsets = (grid - starts[:, None]).astype("timedelta64[D]").astype(np.float64)
    return offsets, False, years


def _bin_onto_grid(values: np.ndarray, idx: np.ndarray, t_out: int) -> np.ndarray:
    """Mean of the observations that fall into each output step; NaN where none does. values [N, T, ...]."""
    n, t_in = values.shape[:2]
    tail = values.shape[2:]
    flat = values.reshape(n, t_in, -1).astype(np.float64)
    ok_idx = (idx >= 0) & (idx < t_out)
    sums = np.zeros((n * t_out, flat.shape[-1]))
    counts = np.zeros((n * t_out, flat.shape[-1]))
    rows = (np.arange(n)[:, None] * t_out + np.clip(idx, 0, t_out - 1)).reshape(-1)
    finite = np.isfinite(flat) & ok_idx[..., None]
    np.add.at(sums, rows, np.where(finite, flat, 0.0).reshape(n * t_in, -1))
    np.add.at(counts, rows, finite.reshape(n * t_in, -1).astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return out.reshape((n, t_out, *tail)).astype(np.float32)


def _unit(var: xr.DataArray, override: str | None) -> str:
    if override is not None:
        return override
    return str(var.attrs.get("units", var.attrs.get("unit", "")))


YEAR_VAR = "__cropwatch_season_year"


def _stack_years(ds: xr.Dataset, spec: CubeSpec) -> tuple[xr.Dataset, CubeSpec]:
    """(field, year) targets over multi-year series: one sample per field-year, each year's season cut later."""
    sd, yd = spec.sample_dim, spec.year_dim
    assert yd is not None
    if yd not in ds.dims:
        raise CubeError("missing_dim", yd, f"the cube has no dimension {yd!r} (dims: {', '.join(map(str, ds.dims))})")
    target = ds[spec.target]
    if set(target.dims) != {sd, yd}:
        raise CubeError(
            "wrong_dims",
            spec.target_name,
            f"target {spec.target!r} has dims {_dims_text(target)}; with year_dim it must be ({sd}, {yd})",
        )
    frame = xr.zeros_like(target, dtype=np.int8)
    out = {}
    for name, var in ds.data_vars.items():
        if sd in var.dims or yd in var.dims:
            var, _ = xr.broadcast(var, frame)
            out[str(name)] = var.transpose(sd, yd, ...).stack(__sample=(sd, yd))
    # Coordinates along the time axis (calendar dates) travel unchanged.
    coords = {str(k): v for k, v in ds.coords.items() if sd not in v.dims and yd not in v.dims}
    stacked = xr.Dataset(out).drop_vars([sd, yd, "__sample"], errors="ignore")
    fields = np.repeat(np.asarray(ds[sd].values if sd in ds.coords else np.arange(ds.sizes[sd])), ds.sizes[yd])
    year_values = ds[yd].values if yd in ds.coords else np.arange(ds.sizes[yd])
    years = np.tile(np.asarray(year_values).astype(np.int64), ds.sizes[sd])
    ids = np.array([f"{f}-{y}" for f, y in zip(fields, years, strict=True)])
    stacked = stacked.assign_coords(coords).rename({"__sample": sd}).assign_coords({sd: ids})
    stacked[YEAR_VAR] = ((sd,), years)
    return stacked, spec.model_copy(update={"year": YEAR_VAR, "year_dim": None})


def _build(ds: xr.Dataset, spec: CubeSpec) -> SeasonCube:
    sd, td = spec.sample_dim, spec.time_dim
    for dim, key in ((sd, "sample_dim"), (td, "time_dim")):
        if dim not in ds.dims:
            raise CubeError(
                "missing_dim",
                dim,
                f"the cube has no dimension {dim!r} (dims: {', '.join(map(str, ds.dims))}); "
                f"set {key} in the mapping spec",
            )
    _require(ds, spec.target, spec.target_name, "missing_target", "target variable")
    if spec.year_dim:
        ds, spec = _stack_years(ds, spec)

    if spec.inputs_listed():
        dynamic, static = list(spec.dynamic), list(spec.static)
        categorical, histogram = list(spec.categorical), list(spec.histogram)
    else:
        # A spec that only renames dims: every other variable is an input, by its dims and dtype.
        inferred = infer_spec(ds.rename({sd: "sample", td: "time"}))
        skip = {spec.target, *(spec.ignore or []), spec.year or "", spec.season_start or "", spec.time_coord or ""}
        dynamic = [v for v in inferred.dynamic if v.name not in skip]
        static = [v for v in inferred.static if v.name not in skip]
        categorical = [v for v in inferred.categorical if v.name not in skip]
        histogram = [v for v in inferred.histogram if v.name not in skip]
    if not dynamic and not histogram:
        raise CubeError("no_inputs", None, "the cube has no time-varying input variable; list some under dynamic")

    for kind, items in (("dynamic", dynamic), ("static", static), ("categorical", categorical)):
        for v in items:
            _require(ds, v.src, v.name, "missing_variable", f"{kind} variable")
    for v in histogram:
        _require(ds, v.src, v.name, "missing_variable", "histogram variable")

    _check_dims(ds, spec, spec.target_name, spec.target, (sd,), "target")
    for v in dynamic:
        _check_dims(ds, spec, v.name, v.src, (sd, td), "time-varying")
    for v in histogram:
        _check_dims(ds, spec, v.name, v.src, (sd, td, spec.bin_dim), "histogram")
    for v in (*static, *categorical):
        _check_dims(ds, spec, v.name, v.src, (sd,), "static")

    report: dict[str, Any] = {"samples_in_file": int(ds.sizes[sd])}
    for name, src in [(spec.target_name, spec.target)] + [(v.name, v.src) for v in (*dynamic, *histogram, *static)]:
        if _valid_count(ds[src]) == 0:
            raise CubeError(
                "all_nan",
                name,
                f"variable {name!r} (file name {src!r}) has no valid value (all NaN); "
                "drop it from the spec or fix the export that produced it",
            )
    for v in categorical:
        if _valid_count(ds[v.src]) == 0:
            raise CubeError("all_nan", v.name, f"categorical variable {v.name!r} has no value at all")

    # Samples without a target cannot train or test anything: drop them and say how many.
    target_values = np.asarray(ds[spec.target].values, dtype=np.float64)
    keep = np.isfinite(target_values)
    report["samples_without_target"] = int((~keep).sum())
    if not keep.all():
        ds = ds.isel({sd: np.flatnonzero(keep)})

    years = None
    if spec.year and spec.year in ds.variables and ds[spec.year].dims == (sd,):
        years = np.asarray(ds[spec.year].values).astype(np.int64)

    offsets, shared, years = _offsets(ds, spec, years)
    n, t_in = ds.sizes[sd], ds.sizes[td]
    steps = np.floor(offsets / spec.time_step_days + 1e-6).astype(np.int64)
    t_out = spec.time_steps or int(steps.max()) + 1
    if t_out < 1:
        raise CubeError("time_axis_mismatch", td, f"no time step of {td!r} falls on or after the season start")
    identity = shared and np.array_equal(steps, np.arange(t_in)) and t_out <= t_in
    report["alignment"] = "as_is" if identity else "binned_by_day_offset"

    data_vars: dict[str, Any] = {}
    units: dict[str, str] = {spec.target_name: _unit(ds[spec.target], spec.target_unit)}
    outside = 0
    for v in (*dynamic, *histogram):
        var = ds[v.src]
        order = (sd, td) + ((spec.bin_dim,) if spec.bin_dim in var.dims else ())
        var = var.transpose(*order)
        dims = ("sample", "time") + (("bin",) if len(order) == 3 else ())
        if identity:
            arr = var.isel({td: slice(0, t_out)}).data
        else:
            grid = np.broadcast_to(steps, (n, t_in))
            arr = _bin_onto_grid(np.asarray(var.values), grid, t_out)
            outside = max(outside, int(((grid < 0) | (grid >= t_out)).sum()))
        role = "histogram" if v in histogram else "dynamic"
        data_vars[v.name] = xr.Variable(dims, arr, {"units": _unit(ds[v.src], v.unit), ROLE_ATTR: role})
        units[v.name] = data_vars[v.name].attrs["units"]
    report["steps_outside_season"] = outside
    for v in static:
        arr = np.asarray(ds[v.src].values, dtype=np.float32)
        data_vars[v.name] = xr.Variable(("sample",), arr, {"units": _unit(ds[v.src], v.unit), ROLE_ATTR: "static"})
        units[v.name] = data_vars[v.name].attrs["units"]
    levels_by: dict[str, list[str]] = {}
    for c in categorical:
        values = _category_strings(ds[c.src].values)
        levels = c.levels if isinstance(c, CategoricalMap) and c.levels else sorted(set(values) - {""})
        unknown = sorted(set(values) - set(levels) - {""})
        if unknown:
            raise CubeError(
                "unknown_category",
                c.name,
                f"categorical variable {c.name!r} has values {unknown[:5]} not in its levels {levels}; "
                "add them to levels in the mapping spec",
            )
        levels_by[c.name] = list(levels)
        data_vars[c.name] = xr.Variable(("sample",), values, {ROLE_ATTR: "categorical", "levels": list(levels)})
    data_vars[spec.target_name] = xr.Variable(
        ("sample",), target_values[keep].astype(np.float32), {"units": units[spec.target_name], ROLE_ATTR: "target"}
    )
    sample_ids = np.asarray(ds[sd].values).astype(str) if sd in ds.coords else np.array([f"s{i}" for i in range(n)])
    coords: dict[str, Any] = {
        "sample": ("sample", sample_ids),
        "time": ("time", np.arange(t_out, dtype=np.float32) * np.float32(spec.time_step_days)),
    }
    if years is not None:
        coords["season_year"] = ("sample", np.asarray(years, dtype=np.int64))
    out = xr.Dataset(data_vars, coords=coords)
    out["time"].attrs.update({"units": "days", "long_name": spec.align.replace("_", " ")})
    out.attrs.update(
        {
            CUBE_ATTR: "1",
            "cropwatch_target": spec.target_name,
            "align": spec.align,
            "time_step_days": float(spec.time_step_days),
        }
    )
    # Gaps stay NaN: the model masks them (a mask channel per variable), so the count is what matters.
    gaps = {}
    for name in [v.name for v in (*dynamic, *histogram)]:
        missing = out[name].isnull().sum()
        missing = int(missing.compute() if hasattr(missing.data, "dask") else missing)
        gaps[name] = {"missing": missing, "fraction": round(missing / max(out[name].size, 1), 6)}
    report["nan_gaps"] = gaps
    report["static_missing"] = {v.name: int(np.isnan(out[v.name].values).sum()) for v in static}
    report["samples"] = int(out.sizes["sample"])
    report["time_steps"] = int(t_out)
    resolved = spec.model_copy(
        update={
            "dynamic": [VariableMap(name=v.name, unit=units[v.name]) for v in dynamic],
            "static": [VariableMap(name=v.name, unit=units[v.name]) for v in static],
            "categorical": [CategoricalMap(name=c.name, levels=levels_by[c.name]) for c in categorical],
            "histogram": [VariableMap(name=v.name, unit=units[v.name]) for v in histogram],
            "time_steps": int(t_out),
        }
    )
    logger.info(
        "season cube: %d samples x %d steps, %d dynamic, %d static, %d categorical; gaps %s",
        report["samples"],
        t_out,
        len(dynamic),
        len(static),
        len(categorical),
        {k: v["missing"] for k, v in gaps.items()},
    )
    return SeasonCube(
        ds=out,
        spec=resolved,
        dynamic=[v.name for v in dynamic],
        static=[v.name for v in static],
        categorical=levels_by,
        histogram=[v.name for v in histogram],
        units=units,
        report=report,
    )


def _category_strings(values: np.ndarray) -> np.ndarray:
    out = []
    for x in np.asarray(values).ravel():
        if x is None or (isinstance(x, float) and np.isnan(x)):
            out.append("")
        elif isinstance(x, bytes):
            out.append(x.decode())
        elif isinstance(x, (float, np.floating)) and float(x).is_integer():
            out.append(str(int(x)))
        else:
            out.append(str(x))
    return np.array(out, dtype=object).astype(str)
