"""The season cube: load, validate and align a user's xarray Dataset into the Cropwatch convention.

The convention (docs/season-cube.md): dimensions ``sample`` (a field-season or county-season) and
``time`` (steps of ``time_step_days`` days since planting or a season start), time-varying variables
on ``(sample, time)``, histogram variables on ``(sample, time, bin)``, static numbers and categories
on ``(sample,)``, and the target on ``(sample,)`` with its unit. Any other naming is mapped by a
:class:`~cloud_trainer.yield_model.spec.CubeSpec`; nothing is renamed on disk.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import xarray as xr

from .cube_align import align_cube, infer_spec
from .cube_types import CUBE_ATTR, ROLE_ATTR, ROLES, CubeError, SeasonArrays, SeasonCube
from .spec import CubeSpec

__all__ = [
    "CUBE_ATTR",
    "ROLES",
    "ROLE_ATTR",
    "CubeError",
    "SeasonArrays",
    "SeasonCube",
    "infer_spec",
    "load_cube",
    "open_dataset",
    "write_cube",
]

logger = logging.getLogger(__name__)

# Files above this size are opened with dask so validation and alignment never hold them whole.
LAZY_BYTES = 256 * 1024 * 1024


def open_dataset(path: str | os.PathLike[str], lazy: bool | None = None) -> xr.Dataset:
    """Open NetCDF or Zarr; with dask (lazy) when asked or when the file is large."""
    p = Path(path)
    if not p.exists():
        raise CubeError(
            "no_file",
            None,
            f"no season cube at {p}; check the path, or write one with 'cropwatch data synth-yield FILE.nc' "
            "or 'cropwatch data iowa-cube FILE.nc'",
        )
    is_zarr = p.is_dir() or p.suffix == ".zarr"
    if lazy is None:
        size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
        lazy = size > LAZY_BYTES
    chunks: dict[str, int] | None = {} if lazy else None
    try:
        if is_zarr:
            return xr.open_zarr(p, chunks=chunks)
        ds = xr.open_dataset(p, chunks=chunks)
    except (OSError, ValueError) as exc:
        # xarray names no backend (ValueError) or netCDF4 cannot parse the header (OSError).
        raise CubeError(
            "unreadable",
            None,
            f"cannot read {p} as a season cube ({exc}); give a NetCDF file (.nc) or a Zarr store (.zarr)",
        ) from exc
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


def load_cube(
    source: str | os.PathLike[str] | xr.Dataset, spec: CubeSpec | None = None, lazy: bool | None = None
) -> SeasonCube:
    """Open, validate and align a cube; raise :class:`CubeError` naming the variable at fault."""
    ds = source if isinstance(source, xr.Dataset) else open_dataset(source, lazy=lazy)
    spec = spec or infer_spec(ds)
    return align_cube(ds, spec)
