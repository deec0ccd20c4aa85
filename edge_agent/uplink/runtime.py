"""The agent's uplink parts built from its config, and what the daemon asks of them."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from shared.messages import Status, Telemetry

from ..config import AgentConfig
from ..ledger import Ledger
from ..outbox import Outbox
from ..pipeline import Pipeline
from .aggregate import TelemetryAggregator
from .gate import UplinkGate
from .power import PowerGovernor
from .settings import PowerSettings, UplinkSettings
from .status import StatusPolicy
from .windows import LinkSchedule

Latest = Callable[[str, float], float | None]
WINDOW_TICK_S = 60.0


class Uplink:
    """Gate (for the outbox), status policy, telemetry aggregator and power governor of one agent.

    ``latest(quantity, since)`` is the newest sensor reading of a quantity since a time (the
    outbox's sensor history), for the power threshold and the duty cycle.
    """

    def __init__(
        self,
        settings: UplinkSettings,
        power: PowerSettings,
        heartbeat_s: float,
        latest: Latest,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.schedule = LinkSchedule(
            settings.windows,
            settings.timezone,
            settings.power_above,
            lambda: latest(settings.power_quantity, clock() - 3600.0),
        )
        gated = settings.metered or not self.schedule.always_open
        self.gate = UplinkGate(settings, self.schedule) if gated else None
        # With windows the status check runs every minute, so a 15-minute window is never missed
        # by an hourly heartbeat; the check itself is cheap and sends nothing unless due.
        self.heartbeat_s = heartbeat_s if self.schedule.always_open else min(heartbeat_s, WINDOW_TICK_S)
        self.status = StatusPolicy(settings, self.schedule, self.heartbeat_s, clock)
        self.aggregator = TelemetryAggregator(settings.telemetry_interval_s) if settings.metered else None
        self.power = PowerGovernor(power, latest, clock)

    def next_contact_at(self) -> datetime | None:
        t = self.status.next_contact()
        return None if t is None else datetime.fromtimestamp(t, UTC)

    def status_due(self, msg: Status, force: bool = False) -> bool:
        return self.status.due(msg, force)

    def telemetry(self, msg: Telemetry) -> list[Telemetry]:
        """Raw telemetry as it should be sent: itself when not metered, else the completed aggregates."""
        return [msg] if self.aggregator is None else self.aggregator.add(msg)

    def attach(self, pipeline: Pipeline) -> None:
        """Telemetry through the aggregator; on a metered link, labelling images at most ``sample_max_kb``."""
        pipeline.shape_telemetry = self.telemetry
        if self.aggregator is not None:
            pipeline.flush_telemetry = self.aggregator.flush
        if self.settings.metered:
            pipeline.sample_max_bytes = int(self.settings.sample_max_kb * 1000)


def open_outbox(
    cfg: AgentConfig, ttl_s: dict[str, float | None], ledger: Ledger | None = None
) -> tuple[Uplink, Outbox]:
    """The agent's outbox behind its uplink gate (the gate reads the power sensor from the outbox)."""
    outbox: Outbox | None = None

    def latest(quantity: str, since: float) -> float | None:
        return None if outbox is None else outbox.latest_reading(quantity, since)

    uplink = Uplink(cfg.uplink, cfg.power, cfg.heartbeat.interval_s, latest)
    path = cfg.data_dir / "outbox.sqlite3"
    outbox = Outbox(path, int(cfg.outbox.budget_mb * 1e6), ttl_s, gate=uplink.gate, ledger=ledger)
    return uplink, outbox
