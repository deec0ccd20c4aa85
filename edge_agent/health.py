"""Health figures for the heartbeat: process CPU and memory, free disk, board temperature."""

from __future__ import annotations

import importlib.util
import logging
import os
import resource
import shutil
import time
from pathlib import Path

from shared.messages import Health

from .outbox import Outbox

logger = logging.getLogger(__name__)

# The edge extra brings psutil; without it the figures come from /proc.
HAVE_PSUTIL = importlib.util.find_spec("psutil") is not None
if HAVE_PSUTIL:
    import psutil


class ProcessStats:
    def __init__(self) -> None:
        self._proc = psutil.Process() if HAVE_PSUTIL else None
        if self._proc is not None:
            self._proc.cpu_percent(None)
        self._last = (time.monotonic(), time.process_time())

    def cpu_percent(self) -> float:
        """Process CPU since the previous call, in percent of one core."""
        now, cpu = time.monotonic(), time.process_time()
        (t0, c0), self._last = self._last, (now, cpu)
        return max(0.0, 100.0 * (cpu - c0) / max(1e-6, now - t0))

    def rss_mb(self) -> float:
        if self._proc is not None:
            return self._proc.memory_info().rss / 1e6
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
        except OSError:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def disk_free_mb(path: Path) -> float | None:
    try:
        return shutil.disk_usage(path).free / 1e6
    except OSError:
        return None


def temperature_c() -> float | None:
    """SoC temperature where the board exposes one (Raspberry Pi, Jetson); None elsewhere."""
    if HAVE_PSUTIL and hasattr(psutil, "sensors_temperatures"):
        try:
            temps = psutil.sensors_temperatures()
        except (OSError, RuntimeError):
            temps = {}
        for entries in temps.values():
            for entry in entries:
                if entry.current is not None and -40 < entry.current < 150:
                    return float(entry.current)
    for zone in sorted(Path("/sys/class/thermal").glob("thermal_zone*/temp")):
        try:
            value = int(zone.read_text().strip()) / 1000.0
        except (OSError, ValueError):
            continue
        if -40 < value < 150:
            return value
    return None


def heartbeat(
    stats: ProcessStats,
    outbox: Outbox,
    errors: dict[str, int],
    latency: tuple[float | None, float | None],
    data_dir: Path,
    uptime_s: float,
) -> Health:
    """The status's health part: process, disk, outbox, error counters and inference latency."""
    ob = outbox.stats()
    dropped = {k: v for k, v in outbox.counters().items() if k.startswith(("dropped_", "expired_", "budget_dropped_"))}
    up = outbox.uplink_usage()
    return Health(
        uptime_s=uptime_s,
        cpu_percent=round(stats.cpu_percent(), 3),
        memory_rss_mb=round(stats.rss_mb(), 1),
        disk_free_mb=disk_free_mb(data_dir),
        temperature_c=temperature_c(),
        outbox_depth=ob["depth"],
        outbox_oldest_age_s=ob["oldest_age_s"],
        outbox_refused=ob["refused"],
        dropped=dict(sorted(dropped.items())[:32]),
        errors=errors,
        inference_p50_ms=latency[0],
        inference_p95_ms=latency[1],
        uplink_bytes_today=up.get("bytes_today"),
        uplink_bytes_month=up.get("bytes_month"),
        uplink_budget_month=up.get("budget_month"),
        uplink_allowance_today=up.get("allowance_today"),
        uplink_waiting=up.get("waiting"),
    )
