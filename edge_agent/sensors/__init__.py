"""Sensor readers: plugins in this package, one file per config ``type`` (docs/edge-agent.md).

A reader returns ``{quantity: value}`` each time the ``sensors`` source polls it
(:mod:`edge_agent.sources.sensors`); the source maps quantities to its configured channels.
"""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel, ConfigDict

from ..plugins import PluginRegistry


class SensorReader(Protocol):
    def read(self) -> dict[str, float]:
        """One sample; raise OSError or ValueError when the device fails (the source closes and reopens)."""
        ...

    def close(self) -> None: ...


class ReaderSettings(BaseModel):
    """What every ``[sources.reader]`` table has; a reader's own settings model adds its options."""

    model_config = ConfigDict(extra="forbid")
    type: str


# factory(settings) -> a reader; the device is opened at the first read, on the source's thread.
READERS: PluginRegistry[ReaderSettings, [], SensorReader] = PluginRegistry(
    "sensor reader", __name__, ReaderSettings, key="type", default="simulated", old_key="kind"
)


def build_reader(settings: ReaderSettings) -> SensorReader:
    return READERS.create(settings)
