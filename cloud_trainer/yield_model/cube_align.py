"""Validation and alignment of a season cube into the Cropwatch convention (docs/season-cube.md).

:func:`infer_spec` reads the roles of a cube already in the convention; :func:`align_cube` checks a
cube against a spec (raising :class:`CubeError` naming the variable at fault) and bins every input
onto days since the season start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from .cube_types import CUBE_ATTR, ROLE_ATTR, CubeError, SeasonCube
from .spec import CategoricalMap, CubeSpec, VariableMap

logger = logging.getLogger(__name__)


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
        start_dates = _as_dates(start_var)
        if start_dates is None:
            raise CubeError("wrong_dims", spec.season_start, f"season start {spec.season_start!r} does not hold dates")
        starts = start_dates
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


@dataclass
class _Inputs:
    """The input variables of a cube by kind, with their names in the file (``.src``)."""

    dynamic: list[VariableMap]
    static: list[VariableMap]
    categorical: list[CategoricalMap]
    histogram: list[VariableMap]


@dataclass
class _TimeGrid:
    """Where each input step lands on the output grid of days since the season start."""

    steps: np.ndarray  # [T_in] or [N, T_in] output step of each input step
    t_out: int
    identity: bool  # input steps already are output steps 0..t_out-1: no binning needed


def _require_dims(ds: xr.Dataset, spec: CubeSpec) -> None:
    for dim, key in ((spec.sample_dim, "sample_dim"), (spec.time_dim, "time_dim")):
        if dim not in ds.dims:
            raise CubeError(
                "missing_dim",
                dim,
                f"the cube has no dimension {dim!r} (dims: {', '.join(map(str, ds.dims))}); "
                f"set {key} in the mapping spec",
            )


def _resolve_inputs(ds: xr.Dataset, spec: CubeSpec) -> _Inputs:
    if spec.inputs_listed():
        inputs = _Inputs(list(spec.dynamic), list(spec.static), list(spec.categorical), list(spec.histogram))
    else:
        # A spec that only renames dims: every other variable is an input, by its dims and dtype.
        inferred = infer_spec(ds.rename({spec.sample_dim: "sample", spec.time_dim: "time"}))
        skip = {spec.target, *(spec.ignore or []), spec.year or "", spec.season_start or "", spec.time_coord or ""}
        inputs = _Inputs(
            [v for v in inferred.dynamic if v.name not in skip],
            [v for v in inferred.static if v.name not in skip],
            [v for v in inferred.categorical if v.name not in skip],
            [v for v in inferred.histogram if v.name not in skip],
        )
    if not inputs.dynamic and not inputs.histogram:
        raise CubeError("no_inputs", None, "the cube has no time-varying input variable; list some under dynamic")
    return inputs


def _validate(ds: xr.Dataset, spec: CubeSpec, inputs: _Inputs) -> None:
    """Every input present, on the right dims, with at least one value; CubeError naming the first that is not."""
    sd, td = spec.sample_dim, spec.time_dim
    kinds: list[tuple[str, list[VariableMap]]] = [
        ("dynamic", inputs.dynamic),
        ("static", inputs.static),
        ("categorical", list(inputs.categorical)),
        ("histogram", inputs.histogram),
    ]
    for kind, items in kinds:
        for v in items:
            _require(ds, v.src, v.name, "missing_variable", f"{kind} variable")

    _check_dims(ds, spec, spec.target_name, spec.target, (sd,), "target")
    for v in inputs.dynamic:
        _check_dims(ds, spec, v.name, v.src, (sd, td), "time-varying")
    for v in inputs.histogram:
        _check_dims(ds, spec, v.name, v.src, (sd, td, spec.bin_dim), "histogram")
    for v in (*inputs.static, *inputs.categorical):
        _check_dims(ds, spec, v.name, v.src, (sd,), "static")

    numeric = [(v.name, v.src) for v in (*inputs.dynamic, *inputs.histogram, *inputs.static)]
    for name, src in [(spec.target_name, spec.target), *numeric]:
        if _valid_count(ds[src]) == 0:
            raise CubeError(
                "all_nan",
                name,
                f"variable {name!r} (file name {src!r}) has no valid value (all NaN); "
                "drop it from the spec or fix the export that produced it",
            )
    for c in inputs.categorical:
        if _valid_count(ds[c.src]) == 0:
            raise CubeError("all_nan", c.name, f"categorical variable {c.name!r} has no value at all")


def _time_grid(ds: xr.Dataset, spec: CubeSpec, years: np.ndarray | None) -> tuple[_TimeGrid, np.ndarray | None]:
    td = spec.time_dim
    offsets, shared, years = _offsets(ds, spec, years)
    t_in = ds.sizes[td]
    steps = np.floor(offsets / spec.time_step_days + 1e-6).astype(np.int64)
    t_out = spec.time_steps or int(steps.max()) + 1
    if t_out < 1:
        raise CubeError("time_axis_mismatch", td, f"no time step of {td!r} falls on or after the season start")
    identity = shared and np.array_equal(steps, np.arange(t_in)) and t_out <= t_in
    return _TimeGrid(steps, t_out, bool(identity)), years


def _aligned_series(
    ds: xr.Dataset, spec: CubeSpec, inputs: _Inputs, grid: _TimeGrid
) -> tuple[dict[str, xr.Variable], int]:
    """The time-varying inputs on the output grid, and the most input steps that fell outside the season."""
    sd, td = spec.sample_dim, spec.time_dim
    n, t_in = ds.sizes[sd], ds.sizes[td]
    out: dict[str, xr.Variable] = {}
    outside = 0
    for v in (*inputs.dynamic, *inputs.histogram):
        var = ds[v.src]
        order = (sd, td) + ((spec.bin_dim,) if spec.bin_dim in var.dims else ())
        var = var.transpose(*order)
        dims = ("sample", "time") + (("bin",) if len(order) == 3 else ())
        if grid.identity:
            arr = var.isel({td: slice(0, grid.t_out)}).data
        else:
            steps = np.broadcast_to(grid.steps, (n, t_in))
            arr = _bin_onto_grid(np.asarray(var.values), steps, grid.t_out)
            outside = max(outside, int(((steps < 0) | (steps >= grid.t_out)).sum()))
        role = "histogram" if v in inputs.histogram else "dynamic"
        out[v.name] = xr.Variable(dims, arr, {"units": _unit(ds[v.src], v.unit), ROLE_ATTR: role})
    return out, outside


def _categories(ds: xr.Dataset, inputs: _Inputs) -> tuple[dict[str, xr.Variable], dict[str, list[str]]]:
    out: dict[str, xr.Variable] = {}
    levels_by: dict[str, list[str]] = {}
    for c in inputs.categorical:
        values = _category_strings(ds[c.src].values)
        levels = c.levels if c.levels else sorted(set(values) - {""})
        unknown = sorted(set(values) - set(levels) - {""})
        if unknown:
            raise CubeError(
                "unknown_category",
                c.name,
                f"categorical variable {c.name!r} has values {unknown[:5]} not in its levels {levels}; "
                "add them to levels in the mapping spec",
            )
        levels_by[c.name] = list(levels)
        out[c.name] = xr.Variable(("sample",), values, {ROLE_ATTR: "categorical", "levels": list(levels)})
    return out, levels_by


def _gaps(out: xr.Dataset, names: list[str]) -> dict[str, dict[str, Any]]:
    # Gaps stay NaN: the model masks them (a mask channel per variable), so the count is what matters.
    gaps = {}
    for name in names:
        total = out[name].isnull().sum()
        missing = int(total.compute() if hasattr(total.data, "dask") else total)
        gaps[name] = {"missing": missing, "fraction": round(missing / max(out[name].size, 1), 6)}
    return gaps


def _coords(ds: xr.Dataset, spec: CubeSpec, t_out: int, years: np.ndarray | None) -> dict[str, Any]:
    sd = spec.sample_dim
    n = ds.sizes[sd]
    sample_ids = np.asarray(ds[sd].values).astype(str) if sd in ds.coords else np.array([f"s{i}" for i in range(n)])
    coords: dict[str, Any] = {
        "sample": ("sample", sample_ids),
        "time": ("time", np.arange(t_out, dtype=np.float32) * np.float32(spec.time_step_days)),
    }
    if years is not None:
        coords["season_year"] = ("sample", np.asarray(years, dtype=np.int64))
    return coords


def align_cube(ds: xr.Dataset, spec: CubeSpec) -> SeasonCube:
    """Validate ``ds`` against ``spec`` and align it into the convention; CubeError names the variable at fault."""
    sd = spec.sample_dim
    _require_dims(ds, spec)
    _require(ds, spec.target, spec.target_name, "missing_target", "target variable")
    if spec.year_dim:
        ds, spec = _stack_years(ds, spec)
    inputs = _resolve_inputs(ds, spec)
    _validate(ds, spec, inputs)

    report: dict[str, Any] = {"samples_in_file": int(ds.sizes[sd])}
    # Samples without a target cannot train or test anything: drop them and say how many.
    target_values = np.asarray(ds[spec.target].values, dtype=np.float64)
    keep = np.isfinite(target_values)
    report["samples_without_target"] = int((~keep).sum())
    if not keep.all():
        ds = ds.isel({sd: np.flatnonzero(keep)})

    years = None
    if spec.year and spec.year in ds.variables and ds[spec.year].dims == (sd,):
        years = np.asarray(ds[spec.year].values).astype(np.int64)
    grid, years = _time_grid(ds, spec, years)
    report["alignment"] = "as_is" if grid.identity else "binned_by_day_offset"

    data_vars, report["steps_outside_season"] = _aligned_series(ds, spec, inputs, grid)
    for v in inputs.static:
        arr = np.asarray(ds[v.src].values, dtype=np.float32)
        data_vars[v.name] = xr.Variable(("sample",), arr, {"units": _unit(ds[v.src], v.unit), ROLE_ATTR: "static"})
    categories, levels_by = _categories(ds, inputs)
    data_vars.update(categories)
    target_unit = _unit(ds[spec.target], spec.target_unit)
    data_vars[spec.target_name] = xr.Variable(
        ("sample",), target_values[keep].astype(np.float32), {"units": target_unit, ROLE_ATTR: "target"}
    )
    units = {name: str(var.attrs["units"]) for name, var in data_vars.items() if "units" in var.attrs}

    out = xr.Dataset(data_vars, coords=_coords(ds, spec, grid.t_out, years))
    out["time"].attrs.update({"units": "days", "long_name": spec.align.replace("_", " ")})
    out.attrs.update(
        {
            CUBE_ATTR: "1",
            "cropwatch_target": spec.target_name,
            "align": spec.align,
            "time_step_days": float(spec.time_step_days),
        }
    )
    series = [v.name for v in (*inputs.dynamic, *inputs.histogram)]
    report["nan_gaps"] = _gaps(out, series)
    report["static_missing"] = {v.name: int(np.isnan(out[v.name].values).sum()) for v in inputs.static}
    report["samples"] = int(out.sizes["sample"])
    report["time_steps"] = grid.t_out
    resolved = spec.model_copy(
        update={
            "dynamic": [VariableMap(name=v.name, unit=units[v.name]) for v in inputs.dynamic],
            "static": [VariableMap(name=v.name, unit=units[v.name]) for v in inputs.static],
            "categorical": [CategoricalMap(name=c.name, levels=levels_by[c.name]) for c in inputs.categorical],
            "histogram": [VariableMap(name=v.name, unit=units[v.name]) for v in inputs.histogram],
            "time_steps": grid.t_out,
        }
    )
    logger.info(
        "season cube: %d samples x %d steps, %d dynamic, %d static, %d categorical; gaps %s",
        report["samples"],
        grid.t_out,
        len(inputs.dynamic),
        len(inputs.static),
        len(inputs.categorical),
        {k: v["missing"] for k, v in report["nan_gaps"].items()},
    )
    return SeasonCube(
        ds=out,
        spec=resolved,
        dynamic=[v.name for v in inputs.dynamic],
        static=[v.name for v in inputs.static],
        categorical=levels_by,
        histogram=[v.name for v in inputs.histogram],
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
