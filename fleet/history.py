"""Rollout history: what was published to each farm, kept in the registry folder.

``ROOT/.rollouts/{farm}/{name}.json`` lists every publish, rollback, promote and end of a shadow run
in order. Champion and shadow records share the file (``rollout.mode`` tells them apart); a
rolled-back record is marked ``undone``. Rollback and promote read it to know what is live, and
the retrain tick reads it to know which version is the farm's champion.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shared.fsutil import atomic_write_text
from shared.messages import RolloutPolicy
from shared.rollout import selects
from shared.topics import fleet_model_topic

from .registry import Registry

Record = dict[str, Any]


def history_path(registry: Registry, farm: str, name: str) -> Path:
    fleet_model_topic(farm, name)  # validates both ids before they become a path
    return registry.root / ".rollouts" / farm / f"{name}.json"


def read_history(registry: Registry, farm: str, name: str) -> list[Record]:
    path = history_path(registry, farm, name)
    return json.loads(path.read_text()) if path.exists() else []


def write_history(registry: Registry, farm: str, name: str, records: list[Record]) -> None:
    path = history_path(registry, farm, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(records, indent=1))


def is_shadow(record: Record) -> bool:
    rollout: dict[str, Any] = record.get("rollout") or {}
    return rollout.get("mode") == "shadow"


def current_champion(records: list[Record]) -> Record | None:
    """The live champion publish (shadow records are a separate track)."""
    live = [r for r in records if not r.get("undone") and not is_shadow(r)]
    return live[-1] if live else None


def current_shadow(records: list[Record]) -> Record | None:
    """The live shadow run, or None when none was started or the last one was ended."""
    shadows = [r for r in records if is_shadow(r)]
    return shadows[-1] if shadows and shadows[-1]["action"] != "end_shadow" else None


def desired_for(
    records: list[Record], name: str, device_id: str, groups: tuple[str, ...] = (), role: str = "champion"
) -> str | None:
    """The version a device should run (``role`` shadow: the challenger), by the records' policies."""
    if role == "shadow":
        live = current_shadow(records)
        if live is None:
            return None
        policy = RolloutPolicy.model_validate(live["rollout"])
        return str(live["version"]) if selects(policy, name, device_id, groups) else None
    for r in reversed(records):
        if r.get("undone") or is_shadow(r):
            continue
        if selects(RolloutPolicy.model_validate(r["rollout"]), name, device_id, groups):
            return str(r["version"])
    return None
