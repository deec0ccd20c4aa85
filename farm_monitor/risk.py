"""Disease risk levels and the colours the maps use (no Streamlit)."""

from __future__ import annotations

RISK_COLOURS = {
    "low": [46, 160, 67],
    "medium": [240, 160, 30],
    "high": [215, 50, 40],
    "unknown": [150, 150, 150],
}
STATUS_COLOURS = {
    "online": [46, 160, 67],
    "silent": [240, 160, 30],
    "asleep": [70, 130, 200],
    "offline": [215, 50, 40],
    "unknown": [150, 150, 150],
}


def risk_level(n: int, share: float, min_detections: int, alert_percent: float) -> str:
    """high at the disease alert's threshold, medium from half of it, unknown with too few detections."""
    if n < min_detections:
        return "unknown"
    if share * 100 >= alert_percent:
        return "high"
    if share * 100 >= alert_percent / 2:
        return "medium"
    return "low"
