"""The synthetic generator's known response: tests rely on it being the right answer."""

from __future__ import annotations

import numpy as np

from cloud_trainer.yield_model.synth import CROPS, SynthConfig, generate, response


def _season(n: int = 2, t: int = 100, temp: float = 22.0):
    return np.full((n, t), temp + 6.0), np.full((n, t), temp - 6.0)


def test_response_factors_move_the_right_way():
    tmax, tmin = _season()
    crop = np.array(["corn", "corn"])
    no_stress, no_disease = np.ones((2, 100)), np.zeros((2, 100))
    base = response(crop, tmax, tmin, no_stress, no_disease)
    # 12 degree-days a day is the corn optimum: no heat loss at all.
    np.testing.assert_allclose(base["yield_expected"], CROPS["corn"]["y_max"], rtol=1e-6)
    dry = response(crop, tmax, tmin, np.full((2, 100), 0.5), no_disease)
    np.testing.assert_allclose(dry["f_water"], 0.5)
    sick = response(crop, tmax, tmin, no_stress, np.full((2, 100), 0.5))
    assert (sick["yield_expected"] < base["yield_expected"]).all()
    hot = response(crop, *_season(temp=28.0), no_stress, no_disease)
    assert (hot["f_heat"] < 0.5).all()
    # Stress at flowering costs more than the same stress at the start.
    early, mid = np.ones((1, 100)), np.ones((1, 100))
    early[0, :15] = 0.0
    mid[0, 48:63] = 0.0
    a = response(crop[:1], tmax[:1], tmin[:1], early, no_disease[:1])["f_water"]
    b = response(crop[:1], tmax[:1], tmin[:1], mid, no_disease[:1])["f_water"]
    assert b < a


def test_generated_cube_is_deterministic_noisy_and_gappy():
    cfg = SynthConfig(fields=20, seasons=2, days=60, seed=7, gap_fraction=0.1)
    a, b = generate(cfg), generate(cfg)
    np.testing.assert_array_equal(a["yield"].values, b["yield"].values)
    assert a.sizes == {"sample": 40, "time": 60}
    y, truth = a["yield"].values, a["yield_expected"].values
    assert 0 < np.abs(y - truth).mean() < 0.1 * truth.mean(), "noise is present but small"
    assert np.corrcoef(y, truth)[0, 1] > 0.95
    gaps = float(a["soil_moisture.mean"].isnull().mean())
    assert 0.03 < gaps < 0.2
    assert set(np.unique(a["crop"].values)) <= set(CROPS)
    assert generate(SynthConfig(fields=20, seasons=2, days=60, seed=8))["yield"].values.tolist() != y.tolist()
