"""Sources: plugins in this package, one file per config ``type`` (docs/edge-agent.md).

Each source runs on its own thread and hands work to the agent through :class:`SourceContext`:
images (bytes plus a reference) for the disease model and sensor readings for telemetry and the
yield model. Sources never decode images; the pipeline does that through
:func:`shared.image.decode_image`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

from shared.fields import Id
from shared.ids import utcnow
from shared.sensor_health import HealthState

from ..plugins import PluginRegistry

logger = logging.getLogger(__name__)


@dataclass
class ImageItem:
    source: str
    data: bytes
    ref: str
    # (source, key) recorded as processed in the same transaction that stores the results.
    seen_key: tuple[str, str] | None = None
    on_done: Callable[[bool], None] | None = None
    requested: bool = False
    at: datetime = field(default_factory=utcnow)


@dataclass
class Reading:
    sensor: str
    quantity: str
    value: float
    unit: str


@dataclass
class HealthItem:
    """A flagged channel (shared/sensor_health.py); becomes one ``sensor_health`` entry of the telemetry."""

    sensor: str
    quantity: str
    state: HealthState
    since: datetime


@dataclass
class ReadingsItem:
    source: str
    readings: list[Reading]
    at: datetime = field(default_factory=utcnow)
    health: list[HealthItem] = field(default_factory=list)


class SourceContext(Protocol):
    stop_event: threading.Event

    def submit(self, item: ImageItem | ReadingsItem) -> bool:
        """Queue work; blocks while the queue is full; False once the agent is stopping."""
        ...

    def is_seen(self, source: str, key: str) -> bool: ...

    def claim(self, source: str, key: str) -> bool:
        """Reserve a work key (a file) until its results are stored; False if already reserved."""
        ...

    def release(self, source: str, key: str) -> None: ...

    def count_error(self, code: str) -> None: ...


class Source(Protocol):
    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def capture_now(self) -> bool:
        """Take a reading or picture now; False if this source cannot."""
        ...


class ThreadedSource:
    """A loop that runs ``tick`` every ``interval_s`` or when :meth:`capture_now` is called."""

    interval_s: float = 60.0
    # Scheduled ticks follow the agent's power budget ([power], edge_agent/uplink/power.py) when
    # its context offers ``capture_allowed(name)``; sensor sources opt out (they measure the battery).
    power_managed: bool = True

    def __init__(self, name: str, ctx: SourceContext) -> None:
        self.name = name
        self.ctx = ctx
        self._stop = threading.Event()
        self._trigger = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"source-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._trigger.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)

    def capture_now(self) -> bool:
        self._requested = True
        self._trigger.set()
        return True

    @property
    def stopping(self) -> bool:
        return self._stop.is_set() or self.ctx.stop_event.is_set()

    def _run(self) -> None:
        self.setup()
        self._requested = False
        first = True
        while not self.stopping:
            if not first:
                self._trigger.wait(self.interval_s)
                self._trigger.clear()
                if self.stopping:
                    break
            first = False
            requested, self._requested = self._requested, False
            allowed = getattr(self.ctx, "capture_allowed", None)
            if not requested and self.power_managed and allowed is not None and not allowed(self.name):
                continue
            try:
                self.tick(requested)
            except Exception:
                logger.exception("source %s failed; it carries on at the next interval", self.name)
                self.ctx.count_error(f"source_{self.name}")
        self.teardown()

    def setup(self) -> None:
        """Open devices (on the source's own thread)."""

    def teardown(self) -> None:
        """Release devices."""

    def tick(self, requested: bool) -> None:
        raise NotImplementedError


class SourceSettings(BaseModel):
    """What every ``[[sources]]`` entry has; a source's own settings model adds its options."""

    model_config = ConfigDict(extra="forbid")
    # A source of images waits for a disease model; one of readings (sensors) starts at once.
    produces_images: ClassVar[bool] = True
    type: str
    name: Id


# factory(settings, context) -> a source, not started
SOURCES: PluginRegistry[SourceSettings, [SourceContext], Source] = PluginRegistry("source", __name__, SourceSettings)


def build_source(settings: SourceSettings, ctx: SourceContext) -> Source:
    """The plugin for ``settings.type``; device libraries are imported only when that source starts."""
    return SOURCES.create(settings, ctx)
