"""The season cube convention, the mapping spec and the errors that name the variable at fault."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from cloud_trainer.yield_model.cube import CubeError, load_cube, open_dataset, write_cube
from cloud_trainer.yield_model.spec import SpecError, parse_spec
from cloud_trainer.yield_model.synth import SynthConfig, generate


@pytest.fixture(scope="module")
def synth() -> xr.Dataset:
    return generate(SynthConfig(fields=6, seasons=2, days=30, seed=3))


def _err(ds: xr.Dataset, spec_text: str | None = None) -> CubeError:
    with pytest.raises(CubeError) as info:
        load_cube(ds, parse_spec(spec_text) if spec_text else None)
    return info.value


def test_canonical_cube_loads_with_inputs_by_role_and_gap_counts(synth):
    cube = load_cube(synth)
    # Sorted by name, so the order does not depend on the file format.
    assert cube.channel_names() == [
        "air_temperature.max",
        "air_temperature.min",
        "disease_pressure",
        "ndvi",
        "rainfall.sum",
        "soil_moisture.mean",
    ]
    assert cube.static_names() == ["area", "soil_awc", "crop=corn", "crop=soy"]
    # Diagnostics (the noise-free answer) must never leak into the inputs.
    assert "yield_expected" not in cube.channel_names() + cube.static_names()
    for name in cube.channel_names():
        assert cube.report["nan_gaps"][name]["missing"] == int(synth[name].isnull().sum())
    assert sum(v["missing"] for v in cube.report["nan_gaps"].values()) > 0
    a = cube.arrays()
    assert a.dynamic.shape == (12, 30, 6) and a.static.shape == (12, 4)
    assert np.isnan(a.dynamic).any(), "gaps stay NaN so the model can mask them"
    assert sorted(set(a.years.tolist())) == [2019, 2020]
    assert cube.target_unit == "t ha-1"


def test_missing_target_is_named(synth):
    e = _err(synth.drop_vars("yield"))
    assert e.reason == "missing_target" and e.variable == "yield" and "'yield'" in str(e)
    e = _err(synth, 'target = "grain"')
    assert e.reason == "missing_target" and "'grain'" in str(e)


def test_wrong_dims_are_named(synth):
    bad = synth.assign(yield_=(("sample", "time"), np.ones((12, 30), np.float32))).drop_vars("yield")
    bad = bad.rename({"yield_": "yield"})
    e = _err(bad)
    assert e.reason == "wrong_dims" and e.variable == "yield" and "(sample, time)" in str(e)
    e = _err(synth, 'static = ["ndvi"]\ndynamic = ["rainfall.sum"]')
    assert e.reason == "wrong_dims" and e.variable == "ndvi"
    e = _err(synth, 'dynamic = ["rainfall.sum", "area"]')
    assert e.reason == "wrong_dims" and e.variable == "area"


def test_all_nan_variable_is_named(synth):
    bad = synth.copy()
    bad["ndvi"] = bad["ndvi"] * np.nan
    e = _err(bad)
    assert e.reason == "all_nan" and e.variable == "ndvi" and "'ndvi'" in str(e)


def test_mismatched_time_axes_are_named(synth):
    bad = synth.assign(evi=(("sample", "time_8day"), np.ones((12, 4), np.float32)))
    e = _err(bad)
    assert e.reason == "time_axis_mismatch" and e.variable == "evi"
    assert "time_8day" in str(e) and "'time'" in str(e)


def test_missing_dim_and_variable(synth):
    e = _err(synth, 'sample_dim = "plot"')
    assert e.reason == "missing_dim" and e.variable == "plot"
    e = _err(synth, 'dynamic = [{name = "ndvi", source = "NDVI_250m"}]')
    assert e.reason == "missing_variable" and e.variable == "ndvi" and "NDVI_250m" in str(e)


def test_unknown_category_is_named(synth):
    e = _err(synth, 'dynamic = ["ndvi"]\ncategorical = [{name = "crop", levels = ["corn"]}]')
    assert e.reason == "unknown_category" and e.variable == "crop" and "soy" in str(e)


def test_samples_without_target_are_dropped_and_counted(synth):
    ds = synth.copy()
    y = ds["yield"].values.copy()
    y[[0, 5]] = np.nan
    ds["yield"] = (("sample",), y, ds["yield"].attrs)
    cube = load_cube(ds)
    assert cube.n_samples == 10 and cube.report["samples_without_target"] == 2


RENAMED_SPEC = """
# a user's own naming: nothing in the file is renamed
[cube]
sample_dim = "plot"
time_dim = "das"
target = "grain_t_ha"
target_name = "yield"
year = "campaign"
align = "days_since_planting"

[dynamic]
"air_temperature.max" = "TX"
"air_temperature.min" = "TN"
disease_pressure = "dis_frac"
ndvi = "NDVI"
"rainfall.sum" = { source = "RR", unit = "mm" }
"soil_moisture.mean" = "SWC"

[static]
area = "area_ha"
soil_awc = "AWC"

[categorical]
crop = { source = "culture", levels = ["corn", "soy"] }
"""


def _renamed(ds: xr.Dataset) -> xr.Dataset:
    names = {"air_temperature.max": "TX", "air_temperature.min": "TN", "rainfall.sum": "RR"}
    names |= {"soil_moisture.mean": "SWC", "disease_pressure": "dis_frac"}
    names |= {"ndvi": "NDVI", "area": "area_ha", "soil_awc": "AWC", "crop": "culture", "yield": "grain_t_ha"}
    out = ds.drop_vars(["yield_expected", "gdd", "f_heat", "f_water", "f_disease"]).rename(names)
    out = out.rename({"sample": "plot", "time": "das", "season_year": "campaign"})
    out.attrs = {}
    for v in out.data_vars.values():
        v.attrs.pop("cropwatch_role", None)
    return out


def test_spec_carries_renamed_dims_and_variables(synth):
    canonical = load_cube(synth)
    cube = load_cube(_renamed(synth), parse_spec(RENAMED_SPEC))
    assert cube.channel_names() == canonical.channel_names()
    assert cube.static_names() == canonical.static_names()
    a, b = canonical.arrays(), cube.arrays()
    np.testing.assert_array_equal(a.dynamic, b.dynamic)
    np.testing.assert_array_equal(a.static, b.static)
    np.testing.assert_array_equal(a.target, b.target)
    np.testing.assert_array_equal(a.years, b.years)
    assert cube.units["rainfall.sum"] == "mm" and cube.target_unit == "t ha-1"


def test_spec_naming_only_dims_takes_other_variables_as_inputs(synth):
    spec = 'sample_dim = "plot"\ntime_dim = "das"\ntarget = "grain_t_ha"\nyear = "campaign"'
    cube = load_cube(_renamed(synth), parse_spec(spec))
    assert set(cube.channel_names()) == {"TX", "TN", "RR", "SWC", "dis_frac", "NDVI"}
    assert set(cube.static_names()) == {"area_ha", "AWC", "culture=corn", "culture=soy"}


def _calendar_cube(planting: list[str]) -> xr.Dataset:
    """Daily values on calendar dates; each value is the day-of-year, so alignment is checkable."""
    dates = np.arange(np.datetime64("2021-04-01"), np.datetime64("2021-10-01"))
    doy = (dates - np.datetime64("2021-01-01")).astype(int) + 1
    n = len(planting)
    return xr.Dataset(
        {
            "gdd": (("field", "date"), np.tile(doy.astype(np.float32), (n, 1))),
            "harvest": (("field",), np.arange(n, dtype=np.float32) + 5),
            "sowing": (("field",), np.array(planting, dtype="datetime64[ns]")),
        },
        coords={"field": [f"p{i}" for i in range(n)], "date": dates.astype("datetime64[ns]")},
    )


def test_calendar_dates_align_by_days_since_planting():
    ds = _calendar_cube(["2021-04-20", "2021-05-15"])
    spec = parse_spec(
        'sample_dim = "field"\ntime_dim = "date"\ntarget = "harvest"\nseason_start = "sowing"\n'
        'time_steps = 100\ndynamic = ["gdd"]'
    )
    cube = load_cube(ds, spec)
    x = cube.arrays().dynamic[..., 0]
    assert x.shape == (2, 100)
    # Day 0 of each season is its own planting date, not a shared calendar date.
    assert x[0, 0] == 110 and x[1, 0] == 135 and x[1, 99] == 234
    assert cube.report["alignment"] == "binned_by_day_offset"
    assert cube.arrays().years.tolist() == [2021, 2021]


def test_fixed_season_start_and_weekly_steps():
    ds = _calendar_cube(["2021-04-20", "2021-05-15"])
    spec = parse_spec(
        'sample_dim = "field"\ntime_dim = "date"\ntarget = "harvest"\nseason_start = "05-01"\n'
        'time_step_days = 7\ndynamic = ["gdd"]\nalign = "days_since_season_start"'
    )
    x = load_cube(ds, spec).arrays().dynamic[..., 0]
    # Step k is the mean of days [7k, 7k+7) after 1 May (doy 121).
    assert x[0, 0] == pytest.approx(124.0) and x[0, 1] == pytest.approx(131.0)


def test_per_sample_pass_dates_are_binned():
    # Satellite passes on different dates per field: a (sample, time) date coordinate.
    passes = np.array([[0, 10, 20, 30], [5, 15, 26, 40]])
    start = np.datetime64("2022-05-01")
    ds = xr.Dataset(
        {
            "ndvi": (("s", "k"), np.array([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]], np.float32)),
            "acq": (("s", "k"), (start + passes).astype("datetime64[ns]")),
            "y": (("s",), np.array([1.0, 2.0], np.float32)),
        }
    )
    spec = parse_spec(
        'sample_dim = "s"\ntime_dim = "k"\ntarget = "y"\ntime_coord = "acq"\nseason_start = "05-01"\n'
        'year = ""\ntime_step_days = 10\ndynamic = ["ndvi"]'
    )
    x = load_cube(ds, spec).arrays().dynamic[..., 0]
    assert x.shape == (2, 5)
    np.testing.assert_allclose(x[0], [0.1, 0.2, 0.3, 0.4, np.nan])
    np.testing.assert_allclose(x[1], [0.5, 0.6, 0.7, np.nan, 0.8])


def test_calendar_dates_without_season_start_say_what_to_set():
    ds = _calendar_cube(["2021-04-20"])
    e = _err(ds, 'sample_dim = "field"\ntime_dim = "date"\ntarget = "harvest"\ndynamic = ["gdd"]')
    assert e.reason == "no_season_start" and "season_start" in str(e)


def test_netcdf_and_zarr_read_alike_and_lazily(synth, tmp_path):
    nc = write_cube(synth, tmp_path / "cube.nc")
    zarr = write_cube(synth, tmp_path / "cube.zarr")
    lazy = open_dataset(zarr, lazy=True)
    assert lazy["ndvi"].chunks is not None, "lazy open must give dask arrays"
    a = load_cube(nc).arrays()
    b = load_cube(lazy).arrays()
    np.testing.assert_array_equal(a.dynamic, b.dynamic)
    np.testing.assert_array_equal(a.static, b.static)
    np.testing.assert_array_equal(a.target, b.target)


def test_spec_errors_name_the_key():
    with pytest.raises(SpecError, match="time_step_dayz"):
        parse_spec("time_step_dayz = 5")
    with pytest.raises(SpecError, match="not valid TOML"):
        parse_spec("target = ")
    with pytest.raises(SpecError, match="repeated: ndvi"):
        parse_spec('dynamic = ["ndvi"]\nstatic = ["ndvi"]')


def test_histogram_variables_become_one_channel_per_bin(synth):
    hist = np.random.default_rng(0).random((12, 30, 4)).astype(np.float32)
    ds = synth.assign(red_hist=(("sample", "time", "bin"), hist, {"units": "1"}))
    cube = load_cube(ds)
    names = cube.channel_names()
    assert names[-4:] == ["red_hist[0]", "red_hist[1]", "red_hist[2]", "red_hist[3]"]
    np.testing.assert_array_equal(cube.arrays().dynamic[..., -4:], hist)
    # A spec maps the user's bin dimension name.
    user = ds.rename({"bin": "bucket", "red_hist": "B04_hist"})
    spec = parse_spec('bin_dim = "bucket"\ndynamic = ["ndvi"]\n[histogram]\nred_hist = "B04_hist"')
    assert load_cube(user, spec).channel_names() == ["ndvi", *names[-4:]]


def test_year_dim_cuts_one_season_per_field_year():
    dates = np.arange(np.datetime64("2020-01-01"), np.datetime64("2022-01-01"))
    doy = np.array([(d - d.astype("datetime64[Y]")).astype(int) + 1 for d in dates], dtype=np.float32)
    ds = xr.Dataset(
        {
            "t2m": (("site", "date"), np.stack([doy, doy + 1000])),
            "yld": (("site", "yr"), np.array([[1.0, 2.0], [3.0, np.nan]], np.float32)),
        },
        coords={"site": ["a", "b"], "date": dates.astype("datetime64[ns]"), "yr": [2020, 2021]},
    )
    spec = parse_spec(
        'sample_dim = "site"\ntime_dim = "date"\nyear_dim = "yr"\ntarget = "yld"\nseason_start = "05-01"\n'
        "time_steps = 10"
    )
    cube = load_cube(ds, spec)
    a = cube.arrays()
    assert a.sample_ids.tolist() == ["a-2020", "a-2021", "b-2020"] and a.years.tolist() == [2020, 2021, 2020]
    # 1 May is day 122 in leap-year 2020 and day 121 in 2021.
    np.testing.assert_array_equal(a.dynamic[:, 0, 0], [122, 121, 1122])
    np.testing.assert_array_equal(a.target, [1.0, 2.0, 3.0])
    assert cube.report["samples_without_target"] == 1
    with pytest.raises(SpecError, match="year_dim needs time_steps"):
        parse_spec('year_dim = "yr"\nseason_start = "05-01"')


def test_metadata_variables_off_the_sample_axis_are_ignored(synth):
    ds = synth.assign(crs=((), 0), time_bnds=(("time", "nv"), np.zeros((30, 2))))
    cube = load_cube(ds, parse_spec('target = "yield"'))
    assert "crs" not in cube.channel_names() and "time_bnds" not in cube.channel_names()
    assert "ndvi" in cube.channel_names()
