"""What the demo shows on the console: live counts read from the ingest database."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from shared.display_names import display_name

from .settings import FARM_ID

if TYPE_CHECKING:
    from rich.console import Console


def counts(db: Path) -> dict[str, int]:
    out = {"detections": 0, "yield_estimates": 0, "telemetry": 0, "samples": 0, "devices": 0}
    if not db.exists():
        return out
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as conn:
        for table in out:
            with contextlib.suppress(sqlite3.Error):
                out[table] = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    return out


def has_tables(db: Path) -> bool:
    """True once ingest has created the database's tables (its first migration)."""
    if not db.exists():
        return False
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as conn:
        try:
            return (
                conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'models'").fetchone()
                is not None
            )
        except sqlite3.Error:
            return False


def latest_detection(db: Path) -> tuple[str, str, float] | None:
    """Label, device and confidence of the newest detection."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as conn:
        try:
            row = conn.execute(
                "SELECT label, device_id, confidence FROM detections ORDER BY received_at DESC LIMIT 1"
            ).fetchone()
        except sqlite3.Error:
            return None
    return (str(row[0]), str(row[1]), float(row[2])) if row else None


def by_class(db: Path) -> list[tuple[str, int]]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as conn:
        try:
            rows: list[tuple[str, int]] = conn.execute(
                "SELECT label, COUNT(*) FROM detections GROUP BY label ORDER BY 2 DESC"
            ).fetchall()
            return rows
        except sqlite3.Error:
            return []


def print_counts(console: Console, elapsed_s: float, current: dict[str, int]) -> None:
    from rich.table import Table

    table = Table(title=f"{FARM_ID}: {elapsed_s:.0f} s", show_edge=False)
    for name in current:
        table.add_column(name, justify="right")
    table.add_row(*(str(v) for v in current.values()))
    console.print(table)


def print_by_class(console: Console, db: Path, names: Mapping[str, str] | None = None) -> None:
    """Counts per class as people read them (``Apple · Cedar apple rust``): the model's table, else the rule."""
    classes = by_class(db)
    if classes:
        console.print("detections by class: " + ", ".join(f"{display_name(label, names)} {n}" for label, n in classes))


def failure_detail(exc: Exception) -> str:
    """The error and, for a failed subcommand, the end of what it wrote to stderr."""
    detail = str(exc)
    stderr = getattr(exc, "stderr", None)
    if stderr:
        text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else str(stderr)
        detail += ": " + text.strip()[-500:]
    return detail
