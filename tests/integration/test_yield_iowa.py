"""The Iowa example cube builds from the team folder's real files and splits by year."""

from __future__ import annotations

import json

import numpy as np
import torch

from cloud_trainer.yield_model import data_cmds, train
from cloud_trainer.yield_model.cube import load_cube

torch.set_num_threads(1)


def test_iowa_cube_builds_and_trains_with_a_year_split(team_data, tmp_path):
    out = tmp_path / "iowa.nc"
    assert data_cmds.iowa_cube_main([str(out), "--source", str(team_data / "yield_iowa")]) == 0
    cube = load_cube(out)
    # 35 counties with weather x 6 years; 22 county-years have no NASS corn figure and are dropped, counted.
    assert cube.report["samples_in_file"] == 210 and cube.report["samples_without_target"] == 22
    assert cube.n_samples == 188 and cube.time_steps == 153 and cube.target_unit == "bu/acre"
    assert cube.ds.attrs["align"] == "days_since_season_start"
    assert "soy_yield" not in cube.channel_names() + cube.static_names()
    assert len(cube.categorical["county"]) == 35
    a = cube.arrays()
    assert sorted(set(a.years.tolist())) == [2017, 2018, 2019, 2020, 2021, 2022]
    # Temperatures were converted from K: a Iowa summer averages well above 15 degC.
    tavg = a.dynamic[..., cube.channel_names().index("tavg")]
    assert 15 < np.nanmean(tavg) < 30
    assert 120 < a.target.mean() < 230

    run = tmp_path / "run"
    args = ["--cube", str(out), "--output-dir", str(run), "--epochs", "1", "--no-plots", "--quiet", "--threads", "1"]
    assert train.main_cli(args) == 0
    report = json.loads((run / "report.json").read_text())
    assert report["split"]["test_year"] == 2022 and report["split"]["train_years"] == [2017, 2018, 2019, 2020, 2021]
    assert report["split"]["n_test"] == int((a.years == 2022).sum())


def test_raw_iowa_files_map_through_a_spec_alone(team_data, tmp_path):
    """Multi-year county series + (county, year) yields, used as they are: the spec cuts the seasons."""
    import xarray as xr

    from cloud_trainer.yield_model.iowa import build_iowa_cube, read_yields
    from cloud_trainer.yield_model.spec import parse_spec

    src = team_data / "yield_iowa"
    weather = xr.open_dataset(src / "hrrr_iowa_county_daily_2017_2022.nc")
    yields = read_yields(src / "iowa_county_yields_2017_2022.csv")
    years = list(range(2017, 2023))
    corn = np.array([[yields.get((int(f), y), (np.nan,))[0] for y in years] for f in weather["fips"].values])
    raw = weather.assign(corn=(("fips", "year"), corn.astype(np.float32), {"units": "bu/acre"}))
    raw = raw.assign_coords(year=years)
    spec = parse_spec(
        'sample_dim = "fips"\ntime_dim = "time"\nyear_dim = "year"\ntarget = "corn"\n'
        'season_start = "05-01"\ntime_steps = 153\nalign = "days_since_season_start"\n'
        'dynamic = ["precipitation", "vapor_pressure_deficit", "avg_temperature"]'
    )
    cube = load_cube(raw, spec)
    reference = load_cube(build_iowa_cube(src))
    assert cube.n_samples == reference.n_samples == 188
    mine = cube.ds.sortby("sample")
    ref = reference.ds.sortby("sample")
    assert mine["sample"].values.tolist() == ref["sample"].values.tolist()
    np.testing.assert_array_equal(mine["season_year"].values, ref["season_year"].values)
    np.testing.assert_allclose(mine["precipitation"].values, ref["precip"].values, rtol=1e-6)
    np.testing.assert_allclose(mine["vapor_pressure_deficit"].values, ref["vpd"].values, rtol=1e-6)
    np.testing.assert_allclose(mine["avg_temperature"].values - 273.15, ref["tavg"].values, atol=1e-3)
    np.testing.assert_allclose(mine["yield"].values, ref["corn_yield"].values)
