"""Season models: shapes, masking, non-crossing quantiles, season progress, pinball loss, truncation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cloud_trainer.yield_model.baselines import metrics, season_aggregates
from cloud_trainer.yield_model.models import SeasonNet, drop_channels, pinball_loss, truncate_seasons, truncate_to

torch.set_num_threads(1)


@pytest.mark.parametrize("arch", ["cnn", "gru", "lstm"])
def test_outputs_shapes_progress_and_ordered_quantiles(arch):
    torch.manual_seed(0)
    net = SeasonNet(n_channels=3, n_static=2, time_steps=20, arch=arch, hidden=8).eval()
    net.set_normalisation(np.ones(3), 2 * np.ones(3), np.zeros(2), np.ones(2), y_mean=100.0, y_std=10.0)
    season = torch.randn(4, 20, 3)
    season[1, 10:] = float("nan")  # half the season not yet observed
    season[2, 3:6, 1] = float("nan")  # a sensor gap
    season[3, 5:] = float("nan")
    expected, q, progress = net(season, torch.randn(4, 2))
    assert expected.shape == (4,) and q.shape == (4, 3) and progress.shape == (4,)
    assert torch.isfinite(expected).all() and torch.isfinite(q).all()
    assert (q[:, 0] <= q[:, 1]).all() and (q[:, 1] <= q[:, 2]).all()
    np.testing.assert_allclose(progress.numpy(), [1.0, 0.5, 1.0, 0.25])


def test_gaps_do_not_depend_on_what_is_hidden():
    """A NaN is masked: the value behind it must not change the output."""
    net = SeasonNet(n_channels=2, n_static=0, time_steps=12, hidden=8).eval()
    a = torch.randn(1, 12, 2)
    a[0, 4, 0] = float("nan")
    b = a.clone()
    out_a = net(a)[0]
    b[0, 4, 0] = float("nan")
    assert torch.equal(out_a, net(b)[0])


def test_pinball_loss_known_values():
    pred = torch.tensor([[0.0, 1.0, 2.0]])
    target = torch.tensor([1.0])
    # q=0.1: under-prediction by 1 costs 0.1; q=0.5: exact; q=0.9: over-prediction by 1 costs 0.1.
    assert pinball_loss(pred, target, [0.1, 0.5, 0.9]).item() == pytest.approx((0.1 + 0.0 + 0.1) / 3)


def test_truncation_keeps_at_least_min_fraction():
    g = torch.Generator().manual_seed(0)
    x = torch.ones(200, 50, 2)
    cut = truncate_seasons(x, g, min_fraction=0.4, full_prob=0.25)
    observed = (~torch.isnan(cut[..., 0])).sum(dim=1)
    assert observed.min() >= 20 and (observed == 50).float().mean() > 0.2
    assert torch.isnan(truncate_to(x, 0.5)[:, 25:]).all() and not torch.isnan(truncate_to(x, 0.5)[:, :25]).any()


def test_aggregates_and_metrics():
    x = np.array([[[1.0], [3.0], [np.nan]]])
    agg = season_aggregates(x, np.zeros((1, 0)))
    np.testing.assert_allclose(agg[0], [2.0, 1.0, 3.0, 1.0])
    m = metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]), np.zeros(3), np.full(3, 2.5))
    assert m["rmse"] == pytest.approx(np.sqrt(1 / 3)) and m["mae"] == pytest.approx(1 / 3)
    assert m["r2"] == pytest.approx(0.5) and m["coverage_10_90"] == pytest.approx(2 / 3)


def test_histogram_cnn_branch():
    net = SeasonNet(n_channels=2 + 2 * 5, n_static=0, time_steps=16, hidden=8, hist_vars=2, hist_bins=5).eval()
    season = torch.rand(3, 16, 12)
    season[0, 8:] = float("nan")
    expected, q, progress = net(season)
    assert expected.shape == (3,) and q.shape == (3, 3) and torch.isfinite(q).all()
    assert progress.tolist() == [0.5, 1.0, 1.0]
    with pytest.raises(ValueError, match="exceed"):
        SeasonNet(n_channels=4, n_static=0, time_steps=16, hist_vars=1, hist_bins=5)


def test_log_target_outputs_positive_yields_and_fits_in_log_space():
    net = SeasonNet(n_channels=2, n_static=0, time_steps=10, hidden=8, log_target=True).eval()
    net.set_normalisation(np.zeros(2), np.ones(2), np.zeros(0), np.ones(0), y_mean=np.log(5.0), y_std=0.5)
    expected, q, _ = net(torch.randn(3, 10, 2))
    assert (expected > 0).all() and (q > 0).all()
    assert net.normalise_target(torch.tensor([5.0])).item() == pytest.approx(0.0, abs=1e-6)


def test_channel_dropout_blanks_whole_variables():
    g = torch.Generator().manual_seed(0)
    x = torch.ones(400, 10, 3)
    out = drop_channels(x, g, 0.25)
    blank = torch.isnan(out).all(dim=1)  # [N, C]: a variable is either whole or gone
    assert torch.equal(torch.isnan(out).any(dim=1), blank)
    assert 0.15 < blank.float().mean().item() < 0.35
    assert drop_channels(x, g, 0.0) is x
