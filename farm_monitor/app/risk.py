"""Risk levels and map colours: they live in :mod:`farm_monitor.risk` so the farm report (which the
app imports, so it may not import the app) draws the same map; the pages keep this name."""

from __future__ import annotations

from farm_monitor.risk import RISK_COLOURS, STATUS_COLOURS, risk_level

__all__ = ["RISK_COLOURS", "STATUS_COLOURS", "risk_level"]
