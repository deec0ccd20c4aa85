"""Baselines trained in the same run as the network, on the same split and the same season cut-offs."""

from __future__ import annotations

import logging
import warnings

import numpy as np
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

logger = logging.getLogger(__name__)

BASELINES = ("training_mean", "ridge_aggregates", "gbr_aggregates")


def season_aggregates(dynamic: np.ndarray, static: np.ndarray) -> np.ndarray:
    """Per-channel mean, min, max and std over the observed part of each season, plus the static features."""
    observed = np.isfinite(dynamic)
    count = observed.sum(axis=1)
    filled = np.where(observed, dynamic, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = filled.sum(axis=1) / count
        sq = np.where(observed, (dynamic - mean[:, None, :]) ** 2, 0.0).sum(axis=1) / count
        lo = np.where(observed, dynamic, np.inf).min(axis=1)
        hi = np.where(observed, dynamic, -np.inf).max(axis=1)
    empty = count == 0
    for a in (mean, sq, lo, hi):
        a[empty] = np.nan
    return np.concatenate([mean, lo, hi, np.sqrt(sq), static], axis=1).astype(np.float64)


def metrics(actual: np.ndarray, predicted: np.ndarray, lower: np.ndarray | None = None, upper=None) -> dict:
    actual = np.asarray(actual, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    err = predicted - actual
    sst = float(((actual - actual.mean()) ** 2).sum())
    out = {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "r2": float(1.0 - (err**2).sum() / sst) if sst > 0 else float("nan"),
        "n": int(actual.size),
    }
    if lower is not None and upper is not None:
        out["coverage_10_90"] = float(np.mean((actual >= lower) & (actual <= upper)))
        out["interval_width"] = float(np.mean(np.asarray(upper) - np.asarray(lower)))
    return out


def _ridge():
    return make_pipeline(
        SimpleImputer(strategy="mean", keep_empty_features=True),
        StandardScaler(),
        RidgeCV(alphas=np.logspace(-2, 4, 25)),
    )


def _gbr(seed: int):
    return make_pipeline(
        SimpleImputer(strategy="mean", keep_empty_features=True),
        GradientBoostingRegressor(
            n_estimators=300, max_depth=3, learning_rate=0.05, subsample=0.8, min_samples_leaf=5, random_state=seed
        ),
    )


def fit_predict(
    name: str,
    train_x: np.ndarray,
    train_static: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_static: np.ndarray,
    seed: int = 0,
) -> np.ndarray:
    """Fit baseline ``name`` on training seasons (cut like the test seasons) and predict the test seasons."""
    if name == "training_mean":
        return np.full(test_x.shape[0], float(np.mean(train_y)))
    model = _ridge() if name == "ridge_aggregates" else _gbr(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        model.fit(season_aggregates(train_x, train_static), train_y)
        return model.predict(season_aggregates(test_x, test_static))
