"""The scheduled yield model: the device's own sensor history as a season tensor.

The manifest's :class:`~shared.manifest.SeasonPreprocessing` describes the tensor: ``time_steps``
steps of ``time_step_days`` days from the planting date (``[yield] season_start``), one column per
variable, float32, raw units (the graph normalises by each variable's mean and std). A variable
takes its values from the sensor quantity of the same name (or the one mapped in
``[yield.variables]``), aggregated per step (mean, or sum for rainfall); steps without data (the
rest of the season, or a sensor gap) take the weather file's value when one is configured, else the
variable's training mean, which the graph normalises to zero: "no information". A variable named
``<quantity>.<aggregate>`` (the trainer's convention, docs/yield-model.md: ``air_temperature.max``,
``rainfall.sum``) is that aggregate of that quantity's readings. Static variables come from
``[yield] static_values``; a one-hot ``crop=<level>`` column from ``[yield] crop``; else their mean.

Layout: one input ``[N, T, V]`` (or ``[N, V, T]``, detected from the spec) with every variable, or,
as the trainer exports it, ``season`` ``[N, T, dynamic]`` plus ``static`` ``[N, S]``. Outputs: a
``quantiles`` tensor ``[N, Q]`` for the manifest's quantile levels, and optionally ``expected``
(or the trainer's ``yield``); without it the median is the expectation.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from shared.manifest import SeasonPreprocessing, SeasonVariable
from shared.messages import YieldEstimate, YieldQuantiles

from .config import YieldSettings
from .inference import InferenceBackend, ModelLoadError
from .outbox import Outbox
from .pipeline import Identity, model_ref

logger = logging.getLogger(__name__)

_SUMMED = ("rainfall", "precip", "rain")
_REDUCE: dict[str, Callable[[np.ndarray], Any]] = {"mean": np.mean, "sum": np.sum, "min": np.min, "max": np.max}
_AGGREGATES = tuple(_REDUCE)


def load_weather_csv(path: Path) -> dict[str, dict[date, float]]:
    out: dict[str, dict[date, float]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            try:
                day = date.fromisoformat(row["date"])
            except (KeyError, ValueError) as exc:
                raise ValueError(f"{path}: every row needs a date column in YYYY-MM-DD form") from exc
            for key, value in row.items():
                if key == "date" or value in (None, ""):
                    continue
                try:
                    out.setdefault(key, {})[day] = float(value)
                except ValueError:
                    continue
    return out


class YieldRunner:
    def __init__(self, settings: YieldSettings, backend: InferenceBackend, outbox: Outbox, identity: Identity) -> None:
        if settings.season_start is None:  # the config refuses this when [yield] is enabled
            raise ValueError("a yield runner needs [yield] season_start (the planting date)")
        self.season_start: date = settings.season_start
        self.settings = settings
        # While an over-the-air version is on trial the one it replaced stays here: a run the new
        # one fails is rolled back and done again with it.
        self.fallback: InferenceBackend | None = None
        self.set_backend(backend)
        self.outbox = outbox
        self.identity = identity
        self.weather = load_weather_csv(settings.weather_csv) if settings.weather_csv else {}

    def set_backend(self, backend: InferenceBackend, fallback: InferenceBackend | None = None) -> None:
        prep = backend.manifest.preprocessing
        if not isinstance(prep, SeasonPreprocessing):
            raise ModelLoadError("wrong_task", f"model {backend.manifest.name} is not a season (yield) model")
        # One tuple assignment: a run reading both never sees one model's spec with the other's session.
        self._model = (backend, prep)
        self.fallback = fallback

    @property
    def backend(self) -> InferenceBackend:
        return self._model[0]

    @property
    def prep(self) -> SeasonPreprocessing:
        return self._model[1]

    def season_tensor(
        self, now: datetime | None = None, prep: SeasonPreprocessing | None = None
    ) -> tuple[np.ndarray, int]:
        """(tensor [T, V] float32, days into the season)."""
        prep = prep or self.prep
        now = now or datetime.now(UTC)
        start = datetime.combine(self.season_start, datetime.min.time(), tzinfo=UTC)
        step = timedelta(days=prep.time_step_days)
        steps, variables = prep.time_steps, prep.variables
        tensor = np.empty((steps, len(variables)), dtype=np.float32)
        edges = [start + i * step for i in range(steps + 1)]
        for j, var in enumerate(variables):
            if var.static:
                tensor[:, j] = self._static_value(var)
                continue
            quantity, aggregate, scale = self._source(var.name)
            rows = self.outbox.readings(quantity, edges[0].timestamp())
            at = np.array([r[0] for r in rows], dtype=np.float64)
            values = np.array([r[1] for r in rows], dtype=np.float64) * scale
            weather = self.weather.get(var.name, {})
            for i in range(steps):
                lo, hi = edges[i].timestamp(), edges[i + 1].timestamp()
                sel = values[(at >= lo) & (at < hi)] if len(at) else values[:0]
                if sel.size and edges[i] <= now:
                    tensor[i, j] = _REDUCE[aggregate](sel)
                    continue
                days = [(edges[i] + timedelta(days=d)).date() for d in range(max(1, int(prep.time_step_days)))]
                known = [weather[d] for d in days if d in weather]
                tensor[i, j] = float(np.mean(known)) if known else var.mean
        return tensor, max(0, (now - start).days)

    def _source(self, name: str) -> tuple[str, str, float]:
        """(sensor quantity, aggregate per step, scale) a season variable is made from."""
        mapping = self.settings.variables.get(name)
        if mapping is not None:
            return mapping.quantity, mapping.aggregate, mapping.scale
        quantity, _, aggregate = name.rpartition(".")
        if quantity and aggregate in _AGGREGATES:
            return quantity, aggregate, 1.0
        return name, "sum" if any(s in name for s in _SUMMED) else "mean", 1.0

    def _static_value(self, var: SeasonVariable) -> float:
        if var.name in self.settings.static_values:
            return float(self.settings.static_values[var.name])
        key, sep, level = var.name.partition("=")
        if sep and key == "crop" and self.settings.crop:
            return 1.0 if level == self.settings.crop else 0.0
        return float(var.mean)

    def _inputs(
        self, backend: InferenceBackend, prep: SeasonPreprocessing, tensor: np.ndarray
    ) -> dict[str, np.ndarray]:
        specs = backend.manifest.inputs
        if len(specs) == 1:
            return {specs[0].name: self._input(backend, tensor)}
        # The trainer's layout: the season (non-static variables, manifest order) and the statics.
        dynamic = [j for j, v in enumerate(prep.variables) if not v.static]
        static = np.array([[self._static_value(v) for v in prep.variables if v.static]], dtype=np.float32)
        by_name = {s.name: s for s in specs}
        season_name = "season" if "season" in by_name else specs[0].name
        static_name = "static" if "static" in by_name else next(s.name for s in specs if s.name != season_name)
        return {season_name: tensor[:, dynamic][None, ...].copy(), static_name: static}

    @staticmethod
    def _input(backend: InferenceBackend, tensor: np.ndarray) -> np.ndarray:
        shape = backend.manifest.inputs[0].shape
        steps, nvars = tensor.shape
        if len(shape) == 3 and shape[1] == nvars and shape[2] == steps and steps != nvars:
            return tensor.T[None, ...].copy()
        return tensor[None, ...]

    def snapshot(self) -> tuple[InferenceBackend, SeasonPreprocessing]:
        """The model and its spec as one pair, for a run that must know which model it ran."""
        return self._model

    def run(
        self, now: datetime | None = None, model: tuple[InferenceBackend, SeasonPreprocessing] | None = None
    ) -> YieldEstimate:
        backend, prep = model or self._model
        tensor, days = self.season_tensor(now, prep)
        outputs = backend.run(self._inputs(backend, prep, tensor))
        levels = list(prep.quantiles)
        if "quantiles" in outputs:
            q = np.asarray(outputs["quantiles"], dtype=np.float64).reshape(-1)
        else:
            first = np.asarray(next(iter(outputs.values())), dtype=np.float64).reshape(-1)
            q = first[1:] if first.size == len(levels) + 1 else first
        if q.size != len(levels) or not np.all(np.isfinite(q)):
            raise ModelLoadError("bad_output", f"yield model gave {q.size} quantiles for levels {levels}")
        q = np.sort(q)  # quantile crossing is a model artefact; the ordered values are the better estimate

        def at_level(level: float) -> float:
            return float(q[int(np.argmin([abs(x - level) for x in levels]))])

        key = next((k for k in ("expected", "yield") if k in outputs), None)
        expected = float(np.asarray(outputs[key]).reshape(-1)[0]) if key else at_level(0.5)
        season_days = prep.time_steps * prep.time_step_days
        return YieldEstimate(
            **self.identity.envelope(),
            model=model_ref(backend),
            field_id=self.identity.field_id,
            crop=self.settings.crop,
            season_start=self.settings.season_start,
            days_into_season=min(days, 1000),
            season_progress=min(1.0, days / season_days),
            expected=expected,
            quantiles=YieldQuantiles(p10=at_level(0.1), p50=at_level(0.5), p90=at_level(0.9)),
            unit=prep.target_unit or "unknown",
        )
