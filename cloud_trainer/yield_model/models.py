"""Season models: a 1D CNN over time and a GRU/LSTM, with static features and quantile outputs.

Every model takes the raw season tensor ``[N, T, C]`` float32 in the cube's units, with NaN for a
gap or a day not yet observed, and (when the cube has static variables) the raw static tensor
``[N, S]``. Normalisation, gap masking and the season-progress computation are part of the module,
so they are part of the exported ONNX graph and the edge never re-implements them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ARCHS = ("cnn", "gru", "lstm")


class SeasonNet(nn.Module):
    """Outputs ``(yield [N], quantiles [N, Q], season_progress [N])`` in the target's unit."""

    # Buffers (registered in __init__): the training normalisation, saved with the weights and part of the graph.
    x_mean: torch.Tensor
    x_std: torch.Tensor
    s_mean: torch.Tensor
    s_std: torch.Tensor
    y_mean: torch.Tensor
    y_std: torch.Tensor

    def __init__(
        self,
        n_channels: int,
        n_static: int,
        time_steps: int,
        arch: str = "cnn",
        hidden: int = 32,
        quantiles: Sequence[float] = (0.1, 0.5, 0.9),
        dropout: float = 0.1,
        hist_vars: int = 0,
        hist_bins: int = 0,
        wide: bool = True,
        log_target: bool = False,
    ) -> None:
        super().__init__()
        if hist_vars * hist_bins > n_channels:
            raise ValueError(f"{hist_vars} histogram variables x {hist_bins} bins exceed {n_channels} channels")
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
        qs = sorted(float(q) for q in quantiles)
        if not qs or any(not 0.0 < q < 1.0 for q in qs):
            raise ValueError(f"quantiles must lie strictly between 0 and 1, got {list(quantiles)}")
        self.arch, self.hidden = arch, hidden
        self.n_channels, self.n_static, self.time_steps = n_channels, n_static, time_steps
        self.quantiles = qs
        # Histogram channels come last, variable-major: [var0 bin0..binB-1, var1 bin0.., ...].
        self.hist_vars, self.hist_bins = hist_vars, hist_bins
        # Yield is a product of factors (potential x heat x water x disease): in log space they add up.
        self.log_target = log_target
        self.n_plain = n_channels - hist_vars * hist_bins
        # The quantile nearest 0.5 is predicted directly; the others as positive steps from it, so they never cross.
        self.mid = min(range(len(qs)), key=lambda i: abs(qs[i] - 0.5))
        self.register_buffer("x_mean", torch.zeros(n_channels))
        self.register_buffer("x_std", torch.ones(n_channels))
        self.register_buffer("s_mean", torch.zeros(max(n_static, 1)))
        self.register_buffer("s_std", torch.ones(max(n_static, 1)))
        self.register_buffer("y_mean", torch.zeros(()))
        self.register_buffer("y_std", torch.ones(()))
        in_ch = 2 * n_channels + 1  # values, observed-masks, position in season
        if arch == "cnn":
            if hist_vars:
                # You et al. 2017: a 2D CNN over (time, bin) of the histograms, bands (and masks) as channels.
                in_ch = 2 * self.n_plain + 1
                self.hist_encoder = nn.Sequential(
                    nn.Conv2d(2 * hist_vars, hidden, (5, 3), padding=(2, 1)),
                    nn.GELU(),
                    nn.Conv2d(hidden, hidden, (5, 3), stride=(2, 1), padding=(2, 1)),
                    nn.GELU(),
                )
            self.encoder = nn.Sequential(
                nn.Conv1d(in_ch, hidden, 7, padding=3),
                nn.GELU(),
                nn.Conv1d(hidden, hidden, 5, stride=2, padding=2),
                nn.GELU(),
                nn.Conv1d(hidden, hidden, 5, stride=2, padding=2),
                nn.GELU(),
            )
            enc_out = 2 * hidden * (2 if hist_vars else 1)
        else:
            self.proj = nn.Linear(in_ch, hidden)
            rnn = nn.GRU if arch == "gru" else nn.LSTM
            self.rnn = rnn(hidden, hidden, batch_first=True)
            # The last state plus the mean of all states: the mean gives every step a short gradient path.
            enc_out = 2 * hidden
        # Wide-and-deep: a linear path from the static features straight to the outputs carries
        # per-field (or per-county) levels that a small deep head learns slowly from few seasons.
        self.wide = nn.Linear(n_static, 1 + len(qs)) if wide and n_static else None
        self.head = nn.Sequential(
            nn.Linear(enc_out + n_static + 1, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1 + len(qs)),
        )

    def set_normalisation(
        self,
        x_mean: np.ndarray,
        x_std: np.ndarray,
        s_mean: np.ndarray,
        s_std: np.ndarray,
        y_mean: float,
        y_std: float,
    ) -> None:
        with torch.no_grad():
            self.x_mean.copy_(torch.as_tensor(x_mean, dtype=torch.float32))
            self.x_std.copy_(torch.as_tensor(x_std, dtype=torch.float32))
            if self.n_static:
                self.s_mean.copy_(torch.as_tensor(s_mean, dtype=torch.float32))
                self.s_std.copy_(torch.as_tensor(s_std, dtype=torch.float32))
            self.y_mean.fill_(float(y_mean))
            self.y_std.fill_(float(y_std))

    def progress(self, season: torch.Tensor) -> torch.Tensor:
        """Fraction of the season up to the last step with any observation."""
        observed = (~torch.isnan(season)).any(dim=-1).to(season.dtype)
        t = season.shape[1]
        steps = torch.arange(1, t + 1, dtype=season.dtype, device=season.device)
        return (observed * steps).amax(dim=1) / float(t)

    def head_output(
        self, season: torch.Tensor, static: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw head output ``[N, 1 + Q]`` in normalised target units, and the season progress."""
        observed = ~torch.isnan(season)
        x = torch.where(observed, (season - self.x_mean) / self.x_std, torch.zeros_like(season))
        n, t, _ = season.shape
        position = torch.linspace(0.0, 1.0, t, device=season.device, dtype=season.dtype)
        position = position.view(1, t, 1).expand(n, t, 1)
        feats = torch.cat([x, observed.to(season.dtype), position], dim=-1)
        progress = self.progress(season)
        if self.arch == "cnn" and self.hist_vars:
            p = self.n_plain
            plain = torch.cat([x[..., :p], observed[..., :p].to(season.dtype), position], dim=-1)
            h = self.encoder(plain.transpose(1, 2))
            hv, hb = self.hist_vars, self.hist_bins
            hist = torch.cat([x[..., p:], observed[..., p:].to(season.dtype)], dim=-1)
            hist = hist.reshape(n, t, 2 * hv, hb).permute(0, 2, 1, 3)  # [N, 2H, T, B]
            g = self.hist_encoder(hist).flatten(2)
            encoded = torch.cat([h.mean(dim=-1), h.amax(dim=-1), g.mean(dim=-1), g.amax(dim=-1)], dim=1)
        elif self.arch == "cnn":
            h = self.encoder(feats.transpose(1, 2))
            encoded = torch.cat([h.mean(dim=-1), h.amax(dim=-1)], dim=1)
        else:
            h0 = torch.zeros(1, n, self.hidden, device=season.device, dtype=season.dtype)
            z = self.proj(feats)
            if self.arch == "gru":
                states, hn = self.rnn(z, h0)
            else:
                states, (hn, _) = self.rnn(z, (h0, torch.zeros_like(h0)))
            encoded = torch.cat([hn[-1], states.mean(dim=1)], dim=1)
        parts = [encoded]
        s = None
        if self.n_static:
            if static is None:
                raise ValueError("this model needs the static tensor")
            s = (static - self.s_mean[: self.n_static]) / self.s_std[: self.n_static]
            s = torch.where(torch.isnan(s), torch.zeros_like(s), s)
            parts.append(s)
        parts.append(progress.unsqueeze(1))
        raw = self.head(torch.cat(parts, dim=1))
        if self.wide is not None and s is not None:
            raw = raw + self.wide(s)
        return raw, progress

    def quantiles_from(self, raw: torch.Tensor) -> torch.Tensor:
        q = raw[:, 1:]
        mid = q[:, self.mid : self.mid + 1]
        below = mid - torch.flip(torch.cumsum(torch.flip(F.softplus(q[:, : self.mid]), [1]), 1), [1])
        above = mid + torch.cumsum(F.softplus(q[:, self.mid + 1 :]), 1)
        return torch.cat([below, mid, above], dim=1)

    def forward(self, season: torch.Tensor, static: torch.Tensor | None = None, normalised: bool = False):
        """``(yield, quantiles, progress)``; with ``normalised=True`` the head's raw output and progress (training)."""
        raw, progress = self.head_output(season, static)
        if normalised:
            return raw, progress
        expected = raw[:, 0] * self.y_std + self.y_mean
        quantiles = self.quantiles_from(raw) * self.y_std + self.y_mean
        if self.log_target:
            expected, quantiles = torch.exp(expected), torch.exp(quantiles)
        return expected, quantiles, progress

    def model_args(self) -> dict:
        return {
            "n_channels": self.n_channels,
            "n_static": self.n_static,
            "time_steps": self.time_steps,
            "arch": self.arch,
            "hidden": self.hidden,
            "quantiles": self.quantiles,
            "hist_vars": self.hist_vars,
            "hist_bins": self.hist_bins,
            "wide": self.wide is not None,
            "log_target": self.log_target,
        }

    def normalise_target(self, target: torch.Tensor) -> torch.Tensor:
        t = torch.log(target) if self.log_target else target
        return (t - self.y_mean) / self.y_std


def pinball_loss(pred: torch.Tensor, target: torch.Tensor, quantiles: Sequence[float]) -> torch.Tensor:
    """Mean quantile (pinball) loss; ``pred`` is ``[N, Q]``, ``target`` ``[N]``."""
    q = torch.as_tensor(list(quantiles), dtype=pred.dtype, device=pred.device).view(1, -1)
    diff = target.unsqueeze(1) - pred
    return torch.maximum(q * diff, (q - 1.0) * diff).mean()


class YieldLoss(nn.Module):
    """MSE on the expected yield plus pinball loss on the quantiles, both in normalised units."""

    def __init__(self, quantiles: Sequence[float], quantile_weight: float = 1.0) -> None:
        super().__init__()
        self.quantiles = list(quantiles)
        self.quantile_weight = quantile_weight

    def forward(self, model: SeasonNet, raw: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        y = model.normalise_target(target)
        mse = F.mse_loss(raw[:, 0], y)
        return mse + self.quantile_weight * pinball_loss(model.quantiles_from(raw), y, self.quantiles)


def truncate_seasons(
    season: torch.Tensor, generator: torch.Generator, min_fraction: float = 0.2, full_prob: float = 0.3
) -> torch.Tensor:
    """Hide the end of each season at a random day, so the model learns honest mid-season forecasts."""
    n, t, _ = season.shape
    lo = max(1, math.ceil(min_fraction * t))
    cut = torch.randint(lo, t + 1, (n,), generator=generator)
    full = torch.rand(n, generator=generator) < full_prob
    cut = torch.where(full, torch.full_like(cut, t), cut).to(season.device)
    hidden = torch.arange(t, device=season.device).view(1, t) >= cut.view(n, 1)
    return season.masked_fill(hidden.unsqueeze(-1), float("nan"))


def drop_channels(season: torch.Tensor, generator: torch.Generator, prob: float) -> torch.Tensor:
    """Blank whole variables of some seasons, so the model copes with a device that lacks a source."""
    if prob <= 0:
        return season
    n, _, c = season.shape
    dropped = (torch.rand(n, 1, c, generator=generator) < prob).to(season.device)
    return season.masked_fill(dropped, float("nan"))


def truncate_to(season: torch.Tensor | np.ndarray, fraction: float):
    """The season as it looked ``fraction`` of the way through (the rest NaN)."""
    t = season.shape[1]
    keep = max(1, round(fraction * t))
    out = season.clone() if isinstance(season, torch.Tensor) else season.copy()
    out[:, keep:] = float("nan")
    return out


def build_model(model_args: dict) -> SeasonNet:
    return SeasonNet(**model_args)
