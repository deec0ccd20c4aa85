"""The Iowa example: a county-season cube from daily HRRR county weather and USDA NASS county yields.

Source files (team folder ``yield_iowa/``; USDA NASS and NOAA WRF-HRRR via the CropNet dataset,
Lin et al., KDD 2024; US Government works, public domain):

- ``hrrr_iowa_county_daily_2017_2022.nc``: dims (fips, time), daily county means;
- ``iowa_county_yields_2017_2022.csv``: fips, year, corn_bu_per_acre, soybean_bu_per_acre.

Each county-year with weather becomes one sample; its season runs from a fixed start (1 May, near
the median Iowa corn planting date) for ``days`` days, so the time axis is days since season start.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .cube import CUBE_ATTR, ROLE_ATTR

logger = logging.getLogger(__name__)

WEATHER_FILE = "hrrr_iowa_county_daily_2017_2022.nc"
YIELDS_FILE = "iowa_county_yields_2017_2022.csv"
# name in the cube -> (name in the HRRR file, converter, unit). Wind components are left out: their
# season means cancel, and speed and gust carry what matters for the crop.
VARIABLES = {
    "tavg": ("avg_temperature", lambda k: k - 273.15, "degC"),
    "tmax": ("max_temperature", lambda k: k - 273.15, "degC"),
    "tmin": ("min_temperature", lambda k: k - 273.15, "degC"),
    "precip": ("precipitation", lambda x: x, "mm d-1"),
    "rh": ("relative_humidity", lambda x: x, "%"),
    "wind": ("wind_speed", lambda x: x, "m s-1"),
    "srad": ("downward_shortwave_radiation_flux", lambda x: x, "W m-2"),
    "vpd": ("vapor_pressure_deficit", lambda x: x, "kPa"),
}
SEASON_START = "05-01"
SEASON_DAYS = 153  # 1 May to 30 September: planting to maturity of Iowa corn


def default_source() -> Path | None:
    """The team folder next to the repository, or CROPWATCH_TEAM_DATA/yield_iowa."""
    env = os.environ.get("CROPWATCH_TEAM_DATA")
    candidates = [Path(env) / "yield_iowa"] if env else []
    here = Path(__file__).resolve()
    candidates += [p.parent / "shared" / "data" / "yield_iowa" for p in here.parents]
    candidates.append(Path.cwd().parent / "shared" / "data" / "yield_iowa")
    return next((p for p in candidates if (p / WEATHER_FILE).is_file()), None)


def read_yields(path: Path) -> dict[tuple[int, int], tuple[float, float]]:
    out = {}
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):

            def num(v: str) -> float:
                return float(v) if v.strip() else float("nan")

            out[(int(row["fips"]), int(row["year"]))] = (num(row["corn_bu_per_acre"]), num(row["soybean_bu_per_acre"]))
    return out


def build_iowa_cube(
    source: str | os.PathLike[str], season_start: str = SEASON_START, days: int = SEASON_DAYS
) -> xr.Dataset:
    """County-season cube in the Cropwatch convention; the target is corn yield in bu/acre."""
    src = Path(source)
    for f in (WEATHER_FILE, YIELDS_FILE):
        if not (src / f).is_file():
            raise FileNotFoundError(f"{src / f} is missing; point --source at the yield_iowa folder")
    weather = xr.open_dataset(src / WEATHER_FILE).load()
    yields = read_yields(src / YIELDS_FILE)
    times = weather["time"].values.astype("datetime64[D]")
    years = sorted({int(y) for y in times.astype("datetime64[Y]").astype(int) + 1970})
    month, day = (int(x) for x in season_start.split("-"))
    fips_all = [int(f) for f in weather["fips"].values]

    samples, sample_years, sample_fips = [], [], []
    series: dict[str, list[np.ndarray]] = {k: [] for k in VARIABLES}
    corn, soy = [], []
    for year in years:
        start = np.datetime64(f"{year:04d}-{month:02d}-{day:02d}")
        window = (times >= start) & (times < start + days)
        if window.sum() < days:
            logger.info("skipping %d: weather covers only %d of %d season days", year, int(window.sum()), days)
            continue
        for i, fips in enumerate(fips_all):
            if (fips, year) not in yields:
                continue
            samples.append(f"{fips}-{year}")
            sample_years.append(year)
            sample_fips.append(str(fips))
            for name, (src_name, convert, _unit) in VARIABLES.items():
                series[name].append(convert(weather[src_name].values[i, window].astype(np.float64)))
            c, s = yields[(fips, year)]
            corn.append(c)
            soy.append(s)
    if not samples:
        raise ValueError(f"no county-season in {src} has both weather and a yield")
    data_vars: dict[str, tuple[tuple[str, ...], np.ndarray, dict[str, Any]]] = {
        name: (("sample", "time"), np.stack(series[name]).astype(np.float32), {"units": unit, ROLE_ATTR: "dynamic"})
        for name, (_, _, unit) in VARIABLES.items()
    }
    levels = sorted(set(sample_fips))
    data_vars["county"] = (("sample",), np.array(sample_fips), {ROLE_ATTR: "categorical", "levels": levels})
    data_vars["corn_yield"] = (("sample",), np.array(corn, np.float32), {"units": "bu/acre", ROLE_ATTR: "target"})
    # Kept for a soybean model (spec target = "soy_yield"); never an input of the corn model.
    data_vars["soy_yield"] = (("sample",), np.array(soy, np.float32), {"units": "bu/acre", ROLE_ATTR: "diagnostic"})
    ds = xr.Dataset(
        data_vars,
        coords={
            "sample": ("sample", np.array(samples)),
            "time": (
                "time",
                np.arange(days, dtype=np.float32),
                {"units": "days", "long_name": "days since season start"},
            ),
            "season_year": ("sample", np.array(sample_years, np.int64)),
        },
        attrs={
            CUBE_ATTR: "1",
            "cropwatch_target": "corn_yield",
            "align": "days_since_season_start",
            "time_step_days": 1.0,
            "season_start": season_start,
            "title": "Iowa county-season cube: daily HRRR county weather and USDA NASS corn yields",
            "source": "USDA NASS Quick Stats and NOAA WRF-HRRR, as packaged by the CropNet dataset "
            "(Lin et al., KDD 2024). US Government works, public domain.",
        },
    )
    missing = int(np.isnan(ds["corn_yield"].values).sum())
    logger.info("Iowa cube: %d county-seasons (%d without a corn yield), %d days each", len(samples), missing, days)
    return ds
