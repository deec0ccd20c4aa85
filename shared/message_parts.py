"""The nested parts messages are built from (model references, scores, readings, health).

Split from :mod:`shared.messages`, which re-exports every name here, so code keeps writing
``messages.LabelScore``; the generated reference lists them under "Nested types".
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field, StringConstraints, model_validator

from .fields import STRICT_MODEL, Id, Label, Probability, Sha256Hex, UtcDatetime, Version
from .manifest import Variant
from .quantities import Quantity
from .sensor_health import HealthState


class ModelRef(BaseModel):
    model_config = STRICT_MODEL
    name: Id
    version: Version
    sha256: Sha256Hex
    variant: Variant = "fp32"


class LabelScore(BaseModel):
    model_config = STRICT_MODEL
    label: Label
    probability: Probability


def _descending(scores: list[LabelScore]) -> list[LabelScore]:
    probs = [s.probability for s in scores]
    if probs != sorted(probs, reverse=True):
        raise ValueError("top_k must be sorted by probability, highest first")
    return scores


TopK = Annotated[list[LabelScore], Field(min_length=1, max_length=20), AfterValidator(_descending)]


class ShadowResult(BaseModel):
    """A challenger model's answer on the same image, reported beside the champion's."""

    model_config = STRICT_MODEL
    model: ModelRef
    top_k: TopK
    inference_ms: Annotated[float, Field(ge=0)] | None = None


class YieldQuantiles(BaseModel):
    model_config = STRICT_MODEL
    p10: float
    p50: float
    p90: float

    @model_validator(mode="after")
    def _ordered(self) -> YieldQuantiles:
        if not self.p10 <= self.p50 <= self.p90:
            raise ValueError("quantiles must satisfy p10 <= p50 <= p90")
        return self


class SensorReading(BaseModel):
    """One channel's reading; on a metered link, the channel over the message's ``interval_s``.

    Aggregated (``count`` present): ``value`` is the last reading of the interval, and ``min``,
    ``mean``, ``max`` and ``count`` summarise it. The four are optional (added after schema 1
    shipped), so a raw reading is the same as before.
    """

    model_config = STRICT_MODEL
    sensor: Id
    quantity: Quantity
    value: float
    unit: Annotated[str, StringConstraints(min_length=1, max_length=16)]
    min: float | None = None
    mean: float | None = None
    max: float | None = None
    count: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _aggregate_complete(self) -> SensorReading:
        parts = (self.min, self.mean, self.max, self.count)
        if any(p is not None for p in parts):
            if any(p is None for p in parts):
                raise ValueError("an aggregated reading needs all of min, mean, max and count")
            assert self.min is not None and self.mean is not None and self.max is not None
            if not self.min <= self.mean <= self.max or not self.min <= self.value <= self.max:
                raise ValueError("an aggregated reading needs min <= mean <= max and min <= value <= max")
        return self


class SensorHealth(BaseModel):
    """A channel whose readings are not to be trusted (shared/sensor_health.py says when)."""

    model_config = STRICT_MODEL
    sensor: Id
    quantity: Quantity
    state: HealthState
    since: UtcDatetime


class RadioLink(BaseModel):
    """How a radio sensor's message arrived (a LoRaWAN uplink through the bridge): the best gateway's view."""

    model_config = STRICT_MODEL
    rssi_dbm: Annotated[float, Field(ge=-200, le=50)] | None = None
    snr_db: Annotated[float, Field(ge=-50, le=50)] | None = None
    frame_counter: Annotated[int, Field(ge=0, le=2**32 - 1)] | None = None
    gateway_id: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    gateways: Annotated[int, Field(ge=0, le=1000)] | None = Field(None, description="How many gateways heard it.")


class ActiveModel(BaseModel):
    model_config = STRICT_MODEL
    name: Id
    version: Version
    sha256: Sha256Hex
    variant: Variant = "fp32"
    role: Literal["champion", "shadow"] = "champion"
    state: Literal["active", "trial", "downloading", "verifying", "rejected", "rolled_back"] = "active"


class Health(BaseModel):
    model_config = STRICT_MODEL
    uptime_s: Annotated[float, Field(ge=0)]
    cpu_percent: Annotated[float, Field(ge=0)] | None = None
    memory_rss_mb: Annotated[float, Field(ge=0)] | None = None
    disk_free_mb: Annotated[float, Field(ge=0)] | None = None
    temperature_c: float | None = None
    outbox_depth: Annotated[int, Field(ge=0)] = 0
    outbox_oldest_age_s: Annotated[float, Field(ge=0)] | None = None
    outbox_refused: Annotated[int, Field(ge=0)] = 0
    dropped: dict[Id, Annotated[int, Field(ge=0)]] = Field(default_factory=dict, max_length=32)
    errors: dict[Id, Annotated[int, Field(ge=0)]] = Field(default_factory=dict, max_length=32)
    inference_p50_ms: Annotated[float, Field(ge=0)] | None = None
    inference_p95_ms: Annotated[float, Field(ge=0)] | None = None
    # A metered link (docs/uplink.md): bytes sent today and this calendar month (topic + payload),
    # the month's budget and today's share of it, and messages waiting for a window or the budget.
    uplink_bytes_today: Annotated[int, Field(ge=0)] | None = None
    uplink_bytes_month: Annotated[int, Field(ge=0)] | None = None
    uplink_budget_month: Annotated[int, Field(ge=0)] | None = None
    uplink_allowance_today: Annotated[int, Field(ge=0)] | None = None
    uplink_waiting: Annotated[int, Field(ge=0)] | None = None
