"""``[uplink]`` and ``[power]``: the agent's metered-link and power settings."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.quantities import Quantity
from shared.wire import WireSettings

from .windows import parse_schedule

STRICT = ConfigDict(extra="forbid")


class UplinkSettings(WireSettings):
    """How the agent encodes (``WireSettings``) and spends a metered or solar-powered link.

    All off by default: a device on a flat-rate link keeps sending everything at once, as before.
    """

    model_config = STRICT
    metered: bool = Field(
        False,
        description="Aggregate telemetry per interval, send status only on change plus a keep-alive, "
        "and enforce budget_mb_month by value.",
    )
    budget_mb_month: Annotated[float, Field(gt=0)] | None = Field(
        None, description="Bytes (topic + payload) this device may send per calendar month, in MB (1e6 bytes)."
    )
    budget_mb_day: Annotated[float, Field(gt=0)] | None = Field(
        None, description="A hard daily cap; by default the month's unspent bytes spread over its remaining days."
    )
    telemetry_interval_s: Annotated[float, Field(ge=60)] = Field(
        3600.0, description="When metered: one telemetry message per interval with min, mean, max, last and count."
    )
    status_keepalive_s: Annotated[float, Field(ge=60)] = Field(
        6 * 3600.0, description="When metered: a status is sent on change, and at least this often."
    )
    hold_s: Annotated[float, Field(gt=0)] = Field(
        36 * 3600.0,
        description="A telemetry or labelling sample that does not fit today's allowance waits this long "
        "for a later day's, then is dropped (counted).",
    )
    sample_max_kb: Annotated[float, Field(ge=2)] = Field(
        12.0, description="When metered: a labelling sample's JPEG is re-encoded (quality, then size) to fit this."
    )
    windows: str | None = Field(
        None, description='Send only in these local-time windows, e.g. "06:00-06:15,18:00-18:15".'
    )
    timezone: str = Field("UTC", description="Time zone of windows and of the budget's days and months (IANA name).")
    power_quantity: Quantity = Field(
        "battery_voltage", description="The sensor quantity that opens the link when above power_above."
    )
    power_above: float | None = Field(
        None, description="Also send (outside the windows) while the latest power_quantity reading is at least this."
    )

    @field_validator("windows")
    @classmethod
    def _windows_parse(cls, value: str | None) -> str | None:
        if value is not None:
            parse_schedule(value)  # ValueError names the bad window and the expected form
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as Europe/Paris or UTC") from None
        return value

    @property
    def budget_bytes_month(self) -> int | None:
        return None if self.budget_mb_month is None else int(self.budget_mb_month * 1e6)

    @property
    def budget_bytes_day(self) -> int | None:
        return None if self.budget_mb_day is None else int(self.budget_mb_day * 1e6)


class PowerSettings(BaseModel):
    """Camera and inference duty cycle from the battery: capture intervals stretch as it runs down."""

    model_config = STRICT
    quantity: Quantity = "battery_voltage"
    low: float | None = Field(None, description="Below this reading image sources capture at low_duty.")
    critical: float | None = Field(None, description="Below this reading image sources stop until it recovers.")
    low_duty: Annotated[float, Field(gt=0, le=1)] = Field(
        0.25, description="Share of captures kept on a low battery (0.25: every fourth interval)."
    )
    max_age_s: Annotated[float, Field(gt=0)] = Field(
        3600.0, description="A reading older than this is not trusted; without one the duty cycle is full."
    )
