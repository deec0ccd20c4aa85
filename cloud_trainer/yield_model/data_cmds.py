"""``cropwatch data synth-yield`` and ``cropwatch data iowa-cube`` (dispatched from cropwatch.data_cli)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from .cube import load_cube, write_cube
from .errors import UsageError, run_cli

logger = logging.getLogger(__name__)


def _logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _summary(path: Path) -> str:
    cube = load_cube(path)
    y = cube.arrays().target
    gaps = sum(v["missing"] for v in cube.report["nan_gaps"].values())
    static = cube.static + [f"{c} ({len(levels)} levels)" for c, levels in cube.categorical.items()]
    return (
        f"{path}: {cube.n_samples} samples x {cube.time_steps} steps of {cube.time_step_days:g} d; "
        f"inputs {', '.join(cube.channel_names())}; static {', '.join(static) or 'none'}; "
        f"target {cube.target} [{cube.target_unit}] mean {np.mean(y):.3g} sd {np.std(y):.3g}; "
        f"{gaps} gap steps; {cube.report['samples_without_target']} samples without target"
    )


def synth_yield_main(argv: list[str] | None = None, prog: str = "cropwatch data synth-yield") -> int:
    from .synth import SynthConfig, generate

    p = argparse.ArgumentParser(
        prog=prog,
        description="Write a synthetic season cube with a known yield response (GDD, water stress, disease).",
    )
    p.add_argument("out", type=Path, help="output: FILE.nc (NetCDF) or DIR.zarr (Zarr)")
    p.add_argument("--fields", type=int, default=50)
    p.add_argument("--seasons", type=int, default=4)
    p.add_argument("--days", type=int, default=120, help="season length in days since planting")
    p.add_argument("--first-year", type=int, default=2019)
    p.add_argument("--noise", type=float, default=0.03, help="relative yield noise (sd)")
    p.add_argument("--sensor-noise", type=float, default=1.0, help="scale of sensor noise (0: exact sensors)")
    p.add_argument("--gap-fraction", type=float, default=0.05, help="share of sensor days missing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--histogram-bins", type=int, default=0, help="also write per-day NDVI pixel histograms")
    args = p.parse_args(argv)
    if args.fields < 1 or args.seasons < 1 or args.days < 8:
        p.error("--fields and --seasons must be >= 1 and --days >= 8")
    _logging()
    cfg = SynthConfig(
        fields=args.fields,
        seasons=args.seasons,
        days=args.days,
        first_year=args.first_year,
        noise=args.noise,
        sensor_noise=args.sensor_noise,
        gap_fraction=args.gap_fraction,
        seed=args.seed,
        histogram_bins=args.histogram_bins,
    )

    def body() -> int:
        write_cube(generate(cfg), args.out)
        print(_summary(args.out))
        return 0

    return run_cli(prog, body)


def iowa_cube_main(argv: list[str] | None = None, prog: str = "cropwatch data iowa-cube") -> int:
    from .iowa import SEASON_DAYS, SEASON_START, build_iowa_cube, default_source

    p = argparse.ArgumentParser(
        prog=prog, description="Build the Iowa county-season cube (HRRR daily weather + USDA corn yields)."
    )
    p.add_argument("out", type=Path, help="output: FILE.nc or DIR.zarr")
    p.add_argument("--source", type=Path, default=None, help="the yield_iowa folder (default: the team folder)")
    p.add_argument("--season-start", default=SEASON_START, help="month-day the season starts (default 05-01)")
    p.add_argument("--days", type=int, default=SEASON_DAYS, help="season length in days (default 153)")
    args = p.parse_args(argv)
    source = args.source or default_source()
    if source is None:
        p.error("cannot find the yield_iowa folder; pass --source DIR")
    _logging()

    def body() -> int:
        try:
            ds = build_iowa_cube(source, args.season_start, args.days)
        except ValueError as exc:
            # No county-season with both weather and a yield: the source folder holds the wrong files.
            raise UsageError(f"{exc}; check --source, --season-start and --days") from exc
        write_cube(ds, args.out)
        print(_summary(args.out))
        return 0

    return run_cli(prog, body)
