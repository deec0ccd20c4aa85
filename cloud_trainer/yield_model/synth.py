"""Synthetic season cubes with a known yield response, so tests know the right answer.

Each field-season gets daily weather, a soil-water bucket, a disease epidemic and a canopy curve.
The yield is a product of three known factors (docs/yield-model.md gives the formulas):

    yield = y_max(crop) * f_heat(GDD) * f_water(stress around flowering) * f_disease(pressure)

and the cube holds what a field device would see: noisy sensor series with gaps (temperatures,
rain, soil moisture, the fraction of leaf detections that are diseased, NDVI), static field facts
(area, soil water capacity, crop), and the yield with multiplicative noise. The noise-free yield
and the three factors are kept as ``diagnostic`` variables, which are never model inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from .cube import CUBE_ATTR, ROLE_ATTR

# Optimal growing degree days per season day, so the response holds for any season length.
CROPS = {"corn": {"y_max": 12.0, "gdd_per_day": 12.0}, "soy": {"y_max": 4.0, "gdd_per_day": 11.5}}
GDD_BASE_C = 10.0
GDD_CAP_C = 30.0
GDD_WIDTH_PER_DAY = 3.75
DISEASE_LOSS = 0.6


@dataclass(frozen=True)
class SynthConfig:
    fields: int = 50
    seasons: int = 4
    days: int = 120
    first_year: int = 2019
    noise: float = 0.03
    sensor_noise: float = 1.0
    gap_fraction: float = 0.05
    seed: int = 0
    histogram_bins: int = 0


def flowering_weights(days: int) -> np.ndarray:
    """Water-stress sensitivity by day since planting: most around flowering (55% of the season)."""
    t = np.arange(days) / days
    w = 0.3 + np.exp(-0.5 * ((t - 0.55) / 0.12) ** 2)
    return w / w.sum()


def response(
    crop: np.ndarray, tmax: np.ndarray, tmin: np.ndarray, water_stress: np.ndarray, disease: np.ndarray
) -> dict[str, np.ndarray]:
    """The known yield response of a season, from noise-free daily series [N, T].

    ``water_stress`` is 1 without stress and 0 at wilting; ``disease`` is the diseased leaf fraction.
    """
    days = tmax.shape[1]
    tmean = np.clip((tmax + tmin) / 2.0, GDD_BASE_C, GDD_CAP_C)
    gdd = (tmean - GDD_BASE_C).sum(axis=1)
    gdd_opt = np.array([CROPS[c]["gdd_per_day"] for c in crop]) * days
    y_max = np.array([CROPS[c]["y_max"] for c in crop])
    f_heat = np.exp(-(((gdd - gdd_opt) / (GDD_WIDTH_PER_DAY * days)) ** 2))
    f_water = (water_stress * flowering_weights(days)[None, :]).sum(axis=1)
    # Disease late in the season costs less than disease during grain fill; weight by the second half.
    late = np.linspace(0.5, 1.5, days)[None, :]
    f_disease = 1.0 - DISEASE_LOSS * np.clip((disease * late).mean(axis=1), 0.0, 1.0)
    return {
        "gdd": gdd,
        "f_heat": f_heat,
        "f_water": f_water,
        "f_disease": f_disease,
        "yield_expected": y_max * f_heat * f_water * f_disease,
    }


def _gaps(rng: np.random.Generator, shape: tuple[int, int], fraction: float) -> np.ndarray:
    """A mask of missing days in runs of 1-7 days (a device offline), about ``fraction`` of all days."""
    n, t = shape
    mask = np.zeros(shape, dtype=bool)
    if fraction <= 0:
        return mask
    runs = rng.poisson(fraction * t / 4.0, size=n)
    for i in range(n):
        for _ in range(runs[i]):
            start = int(rng.integers(0, t))
            mask[i, start : start + int(rng.integers(1, 8))] = True
    return mask


def _pixel_histograms(rng: np.random.Generator, field_ndvi: np.ndarray, bins: int) -> np.ndarray:
    """Per-day NDVI histograms of 50 pixels spread around the field value (as You et al. 2017 feed a CNN)."""
    n, t = field_ndvi.shape
    pixels = field_ndvi[..., None] + rng.normal(0.0, 0.08, size=(n, t, 50))
    edges = np.linspace(-0.1, 1.0, bins + 1)
    idx = np.clip(np.digitize(pixels, edges) - 1, 0, bins - 1)
    hist = np.stack([(idx == b).mean(axis=-1) for b in range(bins)], axis=-1).astype(np.float32)
    hist[np.isnan(field_ndvi)] = np.nan  # no pass, no histogram
    return hist


def generate(cfg: SynthConfig) -> xr.Dataset:
    """A season cube in the Cropwatch convention (dims sample, time = days since planting)."""
    rng = np.random.default_rng(cfg.seed)
    n_f, n_s, t = cfg.fields, cfg.seasons, cfg.days
    n = n_f * n_s
    field_idx = np.repeat(np.arange(n_f), n_s)
    year = np.tile(cfg.first_year + np.arange(n_s), n_f)
    crop_of_field = rng.choice(list(CROPS), size=n_f, p=[0.6, 0.4])
    awc_of_field = rng.uniform(90.0, 220.0, size=n_f)
    area_of_field = rng.uniform(4.0, 80.0, size=n_f)
    crop, awc, area = crop_of_field[field_idx], awc_of_field[field_idx], area_of_field[field_idx]

    # Regional weather per year plus a larger field-level share: a held-out year is a new season, yet
    # still inside the range the training years cover (fields differ more than years do).
    year_temp = rng.normal(0.0, 0.7, size=n_s)[year - cfg.first_year]
    year_rain = rng.lognormal(0.0, 0.2, size=n_s)[year - cfg.first_year]
    temp_anom = year_temp + rng.normal(0.0, 1.5, size=n)
    rain_mult = year_rain * rng.lognormal(0.0, 0.35, size=n)
    planting_doy = rng.integers(110, 141, size=n)

    day = np.arange(t)[None, :]
    doy = planting_doy[:, None] + day
    seasonal = 15.0 + 9.0 * np.sin((doy - 105) / 365.0 * 2 * np.pi)
    ar = np.zeros((n, t))
    shocks = rng.normal(0.0, 1.6, size=(n, t))
    for k in range(1, t):
        ar[:, k] = 0.7 * ar[:, k - 1] + shocks[:, k]
    tmean = seasonal + temp_anom[:, None] + ar
    tmax = tmean + 6.0 + rng.normal(0.0, 0.8, size=(n, t))
    tmin = tmean - 6.0 + rng.normal(0.0, 0.8, size=(n, t))
    wet = rng.random((n, t)) < 0.28
    precip = np.where(wet, rng.exponential(9.0, size=(n, t)), 0.0) * rain_mult[:, None]

    # Soil-water bucket: rain in, evapotranspiration out (more when hot and the canopy is full).
    canopy = 1.0 / (1.0 + np.exp(-(np.arange(t) - 0.3 * t) / (0.06 * t)))
    water = np.zeros((n, t))
    level = 0.75 * awc
    for k in range(t):
        et = (1.0 + 4.0 * canopy[k]) * np.clip(tmean[:, k] / 22.0, 0.2, 1.8)
        level = np.clip(level + precip[:, k] - et, 0.0, awc)
        water[:, k] = level
    water_stress = np.clip(water / (0.5 * awc[:, None]), 0.0, 1.0)

    # Disease: logistic epidemic from a random onset, faster in wet seasons; detections sample it.
    onset = rng.uniform(0.25, 1.3, size=n) * t
    rate = 0.05 + 0.06 * np.clip(rain_mult - 0.6, 0.0, 2.0) * rng.uniform(0.5, 1.5, size=n)
    disease = 0.6 / (1.0 + np.exp(-rate[:, None] * (day - onset[:, None])))

    truth = response(crop, tmax, tmin, water_stress, disease)
    y = truth["yield_expected"] * (1.0 + rng.normal(0.0, cfg.noise, size=n))
    ndvi = 0.15 + 0.7 * canopy[None, :] * (0.5 + 0.5 * water_stress) * (1.0 - 0.8 * disease)

    s = cfg.sensor_noise
    # Names a field device can compute from its own telemetry: <telemetry quantity>.<daily aggregate>;
    # disease_pressure from its detections; ndvi comes from imagery (docs/yield-model.md).
    observed = {
        "air_temperature.max": (tmax + rng.normal(0, 0.5 * s, (n, t)), "degC"),
        "air_temperature.min": (tmin + rng.normal(0, 0.5 * s, (n, t)), "degC"),
        "rainfall.sum": (np.maximum(precip + rng.normal(0, 0.3 * s, (n, t)) * wet, 0.0), "mm"),
        "soil_moisture.mean": (0.05 + 0.35 * water / awc[:, None] + rng.normal(0, 0.01 * s, (n, t)), "m3 m-3"),
        "disease_pressure": (np.clip(rng.binomial(40, disease) / 40.0, 0, 1), "1"),
        "ndvi": (ndvi + rng.normal(0, 0.02 * s, (n, t)), "1"),
    }
    static = {"area": (area, "ha"), "soil_awc": (awc, "mm")}
    return _dataset(rng, cfg, observed, static, crop, y, truth, Seasons(field_idx, year, planting_doy))


@dataclass
class Seasons:
    """Which field and year each sample is, and its planting day of year."""

    field_idx: np.ndarray
    year: np.ndarray
    planting_doy: np.ndarray


def _dataset(
    rng: np.random.Generator,
    cfg: SynthConfig,
    observed: dict[str, tuple[np.ndarray, str]],
    static: dict[str, tuple[np.ndarray, str]],
    crop: np.ndarray,
    y: np.ndarray,
    truth: dict[str, np.ndarray],
    seasons: Seasons,
) -> xr.Dataset:
    """The observations with gaps, the static inputs, the target and the diagnostics as a convention cube."""
    data_vars: dict[str, tuple[tuple[str, ...], np.ndarray, dict[str, Any]]] = {}
    for name, (values, unit) in observed.items():
        gappy = np.where(_gaps(rng, (y.shape[0], cfg.days), cfg.gap_fraction), np.nan, values).astype(np.float32)
        data_vars[name] = (("sample", "time"), gappy, {"units": unit, ROLE_ATTR: "dynamic"})
    if cfg.histogram_bins:
        data_vars["ndvi_hist"] = (
            ("sample", "time", "bin"),
            _pixel_histograms(rng, data_vars["ndvi"][1], cfg.histogram_bins),
            {"units": "1", ROLE_ATTR: "histogram"},
        )
    for name, (values, unit) in static.items():
        data_vars[name] = (("sample",), values.astype(np.float32), {"units": unit, ROLE_ATTR: "static"})
    data_vars["crop"] = (("sample",), crop.astype(str), {ROLE_ATTR: "categorical", "levels": sorted(CROPS)})
    data_vars["yield"] = (("sample",), y.astype(np.float32), {"units": "t ha-1", ROLE_ATTR: "target"})
    for name in ("yield_expected", "gdd", "f_heat", "f_water", "f_disease"):
        data_vars[name] = (("sample",), truth[name].astype(np.float32), {ROLE_ATTR: "diagnostic"})
    planting = np.array(
        [
            np.datetime64(f"{y_:04d}-01-01") + int(d) - 1
            for y_, d in zip(seasons.year, seasons.planting_doy, strict=True)
        ]
    )
    ds = xr.Dataset(
        data_vars,
        coords={
            "sample": (
                "sample",
                np.array([f"f{f:04d}-{y_}" for f, y_ in zip(seasons.field_idx, seasons.year, strict=True)]),
            ),
            "time": (
                "time",
                np.arange(cfg.days, dtype=np.float32),
                {"units": "days", "long_name": "days since planting"},
            ),
            "season_year": ("sample", seasons.year.astype(np.int64)),
            "field_id": ("sample", np.array([f"f{f:04d}" for f in seasons.field_idx])),
            "planting_date": ("sample", planting.astype("datetime64[ns]")),
        },
        attrs={
            CUBE_ATTR: "1",
            "cropwatch_target": "yield",
            "align": "days_since_planting",
            "time_step_days": 1.0,
            "title": "Cropwatch synthetic season cube",
            "synthetic": "1",
            "synth_config": repr(cfg),
        },
    )
    return ds
