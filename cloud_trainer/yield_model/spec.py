"""The mapping spec: how a user's own season cube maps onto the Cropwatch convention.

A spec is a small TOML file that names the sample and time dimensions, the target, and the
variables (with the names they have in the user's file), so a cube is used as it is, never renamed
on disk. See docs/season-cube.md for the format and examples.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

SPEC_MODEL = ConfigDict(extra="forbid", frozen=True)
# Cropwatch-side names end up in the manifest, where they must be short and plain.
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")]
MONTH_DAY = re.compile(r"^(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$")


class SpecError(ValueError):
    """A mapping spec that cannot be used; the message names the key and what to write instead."""


class VariableMap(BaseModel):
    model_config = SPEC_MODEL
    name: Name = Field(description="Name inside Cropwatch (model input spec, manifest, reports).")
    source: str | None = Field(None, description="Name of the variable in the user's file; default: name.")
    unit: str | None = Field(None, description="Unit; default: the variable's `units` attribute.")

    @property
    def src(self) -> str:
        return self.source or self.name


class CategoricalMap(VariableMap):
    levels: list[str] | None = Field(
        None, description="Known categories in a fixed order; default: the sorted values seen in the cube."
    )


class CubeSpec(BaseModel):
    """The resolved mapping; every field has the Cropwatch convention as its default."""

    model_config = SPEC_MODEL
    sample_dim: str = "sample"
    time_dim: str = "time"
    bin_dim: str = "bin"
    target: str = "yield"
    target_name: Name = "yield"
    target_unit: str | None = None
    year: str | None = Field(
        "season_year", description="Variable or coordinate (per sample) holding the season's year, for year splits."
    )
    year_dim: str | None = Field(
        None,
        description="A year dimension of the target, as in (field, year): each field-year becomes one sample, "
        "cut from multi-year time series by season_start; needs time_steps.",
    )
    align: Literal["days_since_planting", "days_since_season_start"] = "days_since_planting"
    time_step_days: Annotated[float, Field(gt=0, le=366)] = 1.0
    time_steps: Annotated[int, Field(ge=0, le=4096)] = 0
    # Where each time step sits in the season: by default the time coordinate if it holds numbers
    # (days since the season start), else the step index. Calendar dates need a season start.
    time_coord: str | None = Field(
        None, description="Coordinate/variable with each step's date or day offset; (time,) or (sample, time)."
    )
    season_start: str | None = Field(
        None,
        description="Per-sample start date: a variable name holding dates, or a fixed month-day such as '05-01'.",
    )
    dynamic: list[VariableMap] = Field(default_factory=list)
    static: list[VariableMap] = Field(default_factory=list)
    categorical: list[CategoricalMap] = Field(default_factory=list)
    histogram: list[VariableMap] = Field(default_factory=list)
    ignore: list[str] = Field(default_factory=list, description="Variables in the file that are not model inputs.")

    @model_validator(mode="after")
    def _names_unique(self) -> CubeSpec:
        names = [v.name for v in (*self.dynamic, *self.static, *self.categorical, *self.histogram)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"variable names must be unique; repeated: {', '.join(dupes)}")
        if self.target_name in names:
            raise ValueError(f"the target name {self.target_name!r} is also used by an input variable")
        return self

    @model_validator(mode="after")
    def _year_dim_needs_window(self) -> CubeSpec:
        if self.year_dim and not (self.time_steps and self.season_start):
            raise ValueError("year_dim needs time_steps and season_start, to cut each year's season out of the series")
        return self

    @property
    def fixed_start(self) -> tuple[int, int] | None:
        if self.season_start and MONTH_DAY.match(self.season_start):
            month, day = self.season_start.split("-")
            return int(month), int(day)
        return None

    def inputs_listed(self) -> bool:
        return bool(self.dynamic or self.static or self.categorical or self.histogram)


def _flatten(raw: dict) -> dict:
    """Accept both the flat form and a ``[cube]`` table, and variables under ``[variables]``."""
    out = dict(raw.pop("cube", {}) or {})
    variables = raw.pop("variables", {}) or {}
    out.update(raw)
    for kind in ("dynamic", "static", "categorical", "histogram"):
        if kind in variables:
            out[kind] = variables[kind]
    for kind in ("dynamic", "static", "categorical", "histogram"):
        items = out.get(kind)
        if isinstance(items, dict):
            # [dynamic] ndvi = "NDVI"  or  [dynamic.ndvi] source = "NDVI"
            out[kind] = [{"name": k, "source": v} if isinstance(v, str) else {"name": k, **v} for k, v in items.items()]
        elif isinstance(items, list):
            out[kind] = [{"name": v} if isinstance(v, str) else v for v in items]
    return out


def parse_spec(text: str, origin: str = "<spec>") -> CubeSpec:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{origin}: not valid TOML: {exc}") from exc
    try:
        return CubeSpec.model_validate(_flatten(raw))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()
        )
        raise SpecError(f"{origin}: invalid mapping spec: {problems}") from exc


def load_spec(path: str | os.PathLike[str]) -> CubeSpec:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise SpecError(f"no mapping spec at {p}") from exc
    return parse_spec(text, origin=str(p))
