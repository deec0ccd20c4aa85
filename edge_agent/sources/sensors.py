"""The ``sensors`` source: polls a sensor reader (edge_agent/sensors/) every ``interval_s`` and
hands its configured channels on as readings, for telemetry and the yield model's history."""

from __future__ import annotations

import logging
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SerializeAsAny, model_validator

from shared.fields import Id
from shared.quantities import CANONICAL_UNITS, Quantity

from ..sensors import READERS, ReaderSettings, SensorReader, build_reader
from . import SOURCES, Reading, ReadingsItem, SourceContext, SourceSettings, ThreadedSource

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


class SensorPoller(ThreadedSource):
    def __init__(self, settings: SensorSourceSettings, ctx: SourceContext, reader: SensorReader | None = None) -> None:
        super().__init__(settings.name, ctx)
        self.settings = settings
        self.interval_s = settings.interval_s
        self.reader = reader or build_reader(settings.reader)

    def tick(self, requested: bool) -> None:
        try:
            values = self.reader.read()
        except (OSError, ValueError) as exc:
            logger.warning("sensor reader of %s failed: %s", self.name, exc)
            self.ctx.count_error("sensor_read")
            self.reader.close()
            return
        readings = [
            Reading(sensor=c.sensor, quantity=c.quantity, value=values[c.quantity], unit=c.unit)
            for c in self.settings.channels
            if c.quantity in values
        ]
        if readings:
            self.ctx.submit(ReadingsItem(source=self.name, readings=readings))
        else:
            self.ctx.count_error("sensor_no_values")

    def teardown(self) -> None:
        self.reader.close()


SOURCES.register(SensorSourceSettings, SensorPoller)
