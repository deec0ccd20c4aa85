"""The ``sensors`` source: polls a sensor reader (edge_agent/sensors/) every ``interval_s`` and
hands its configured channels on as readings, for telemetry and the yield model's history.

Each channel's value is converted from the channel's unit to the quantity's canonical unit
(shared/quantities.py), and judged by :class:`shared.sensor_health.SensorHealthTracker`: a channel
out of range, stuck or missing is flagged in the telemetry message while the readings keep flowing.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, ClassVar, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SerializeAsAny, model_validator

from shared.fields import Id
from shared.ids import utcnow
from shared.quantities import CANONICAL_UNITS, Quantity, to_canonical
from shared.sensor_health import SensorHealthTracker

from ..sensors import READERS, ReaderSettings, SensorReader, build_reader
from . import SOURCES, HealthItem, Reading, ReadingsItem, SourceContext, SourceSettings, ThreadedSource

logger = logging.getLogger(__name__)


_DEFAULT_CHANNELS: tuple[tuple[str, Quantity], ...] = (
    ("soil1", "soil_moisture"),
    ("air1", "air_temperature"),
    ("air1", "relative_humidity"),
    ("leaf1", "leaf_wetness"),
)


class SensorChannel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sensor: Id
    quantity: Quantity
    unit: str = Field(description="The unit the reader reports in; by default the quantity's canonical unit.")

    @model_validator(mode="before")
    @classmethod
    def _canonical_unit(cls, data: Any) -> Any:
        if isinstance(data, dict) and "unit" not in data and data.get("quantity") in CANONICAL_UNITS:
            return {**data, "unit": CANONICAL_UNITS[data["quantity"]]}
        return data

    @model_validator(mode="after")
    def _unit_known(self) -> SensorChannel:
        to_canonical(self.quantity, 0.0, self.unit)  # UnknownUnit (a ValueError) names the accepted units
        return self


class HealthSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stuck_readings: Annotated[int, Field(ge=0)] = Field(
        10, description="This many identical readings in a row flag the channel stuck (0: never)."
    )
    missing_intervals: Annotated[int, Field(ge=0)] = Field(
        3, description="This many polls in a row without a value flag the channel missing (0: never)."
    )


@runtime_checkable
class CountsErrors(Protocol):
    """A reader that survives partial failures (one probe of a bus) reports them here."""

    def take_errors(self) -> dict[str, int]: ...


class SensorSourceSettings(SourceSettings):
    produces_images: ClassVar[bool] = False
    type: Literal["sensors"] = "sensors"
    interval_s: Annotated[float, Field(gt=0)] = 300.0
    reader: Annotated[SerializeAsAny[ReaderSettings], BeforeValidator(READERS.validate)] = Field(
        default_factory=lambda: READERS.parse({"type": "simulated"})
    )
    channels: list[SensorChannel] = Field(
        default_factory=lambda: [
            SensorChannel(sensor=sensor, quantity=quantity, unit=CANONICAL_UNITS[quantity])
            for sensor, quantity in _DEFAULT_CHANNELS
        ]
    )
    health: HealthSettings = Field(default_factory=HealthSettings)


class SensorPoller(ThreadedSource):
    power_managed = False

    def __init__(self, settings: SensorSourceSettings, ctx: SourceContext, reader: SensorReader | None = None) -> None:
        super().__init__(settings.name, ctx)
        self.settings = settings
        self.interval_s = settings.interval_s
        self.reader = reader or build_reader(settings.reader)
        h = settings.health
        self.health = SensorHealthTracker(stuck_after=h.stuck_readings, missing_after=h.missing_intervals)

    def tick(self, requested: bool) -> None:
        now = utcnow()
        failed = False
        try:
            values = self.reader.read()
        except (OSError, ValueError) as exc:
            logger.warning("sensor reader of %s failed: %s", self.name, exc)
            self.ctx.count_error("sensor_read")
            self.reader.close()
            values, failed = {}, True
        if isinstance(self.reader, CountsErrors):
            for code, n in self.reader.take_errors().items():
                for _ in range(n):
                    self.ctx.count_error(code)
        readings = [
            Reading(
                sensor=c.sensor,
                quantity=c.quantity,
                value=to_canonical(c.quantity, values[c.quantity], c.unit),
                unit=CANONICAL_UNITS[c.quantity],
            )
            for c in self.settings.channels
            if c.quantity in values
        ]
        flags = self.health.observe(
            [(c.sensor, c.quantity) for c in self.settings.channels],
            {(r.sensor, r.quantity): r.value for r in readings},
            now,
        )
        health = [HealthItem(f.sensor, f.quantity, f.state, f.since) for f in flags]
        if readings or health:
            self.ctx.submit(ReadingsItem(source=self.name, readings=readings, at=now, health=health))
        if not readings and not failed:
            self.ctx.count_error("sensor_no_values")

    def teardown(self) -> None:
        self.reader.close()


SOURCES.register(SensorSourceSettings, SensorPoller)
