"""When a status is worth its bytes, and when the device promises to be heard from next.

Unmetered: every heartbeat, as before. Metered: only when what the status says changes (state,
models, refused messages, a new kind of error or drop), or when ``status_keepalive_s`` has passed
since the last one; always inside an uplink window. The broker's keep-alive and the last will
already tell online from offline, so a status that only repeats itself buys nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from shared.messages import Status

from .settings import UplinkSettings
from .windows import LinkSchedule

# Health fields that change on every heartbeat and alone are no reason to send one.
_VOLATILE_HEALTH = {
    "uptime_s", "cpu_percent", "memory_rss_mb", "disk_free_mb", "temperature_c", "outbox_depth",
    "outbox_oldest_age_s", "inference_p50_ms", "inference_p95_ms", "uplink_bytes_today", "uplink_bytes_month",
    "uplink_allowance_today", "uplink_waiting",
}  # fmt: skip
# A status is sent this long before the promised next contact runs out, so it arrives in time.
_EARLY_S = 60.0


def fingerprint(msg: Status) -> str:
    doc = msg.model_dump(mode="json", exclude={"msg_id", "observed_at", "next_contact_at"})
    health = doc.get("health") or {}
    doc["health"] = {k: v for k, v in health.items() if k not in _VOLATILE_HEALTH}
    # A new kind of error or drop is news; one more of a kind already reported waits for the keep-alive.
    for name in ("errors", "dropped"):
        doc["health"][name] = sorted(health.get(name) or {})
    return json.dumps(doc, sort_keys=True)


class StatusPolicy:
    def __init__(
        self,
        settings: UplinkSettings,
        schedule: LinkSchedule,
        heartbeat_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.schedule = schedule
        self.heartbeat_s = heartbeat_s
        self.clock = clock
        self._last_fp: str | None = None
        self._last_at = -1e18
        self._was_open = False

    def next_contact(self, now: float | None = None) -> float | None:
        """The latest time (epoch s) by which this device will have said something, or None (every heartbeat)."""
        now = self.clock() if now is None else now
        if not self.settings.metered and self.schedule.always_open:
            return None
        nxt = self.schedule.next_open(now)
        if nxt is not None:
            # The status that opens the next window goes out within a heartbeat of it.
            return nxt + self.heartbeat_s
        keepalive = self.settings.status_keepalive_s if self.settings.metered else self.heartbeat_s
        return now + keepalive + self.heartbeat_s

    def due(self, msg: Status, force: bool = False) -> bool:
        """Whether to publish ``msg`` now; remembers it as sent when it says yes."""
        now = self.clock()
        is_open = self.schedule.is_open(now)
        # The first heartbeat of a window is the contact the previous status promised.
        opened, self._was_open = is_open and not self._was_open, is_open
        # The first status after a start goes out even between windows: whoever installed or
        # restarted the device sees it come online, and the monitor learns its next contact.
        if not is_open and not (force and self._last_fp is None):
            return False
        fp = fingerprint(msg)
        keepalive = self.settings.status_keepalive_s if self.settings.metered else 0.0
        windowed = opened and not self.schedule.always_open
        if force or fp != self._last_fp or now - self._last_at >= keepalive - _EARLY_S or windowed:
            self._last_fp, self._last_at = fp, now
            return True
        return False
