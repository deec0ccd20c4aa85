"""Health figures for the heartbeat: process CPU and memory, free disk, board temperature."""

from __future__ import annotations

import logging
import os
import resource
import shutil
import time
from pathlib import Path

logger = logging.getLogger(__name__)

try:
    import psutil
except ModuleNotFoundError:  # the edge extra brings psutil; without it the figures come from /proc
    psutil = None


class ProcessStats:
    def __init__(self) -> None:
        self._proc = psutil.Process() if psutil else None
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
    if psutil is not None and hasattr(psutil, "sensors_temperatures"):
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
