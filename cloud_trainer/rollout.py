"""Publishing models to farms: the retained desired-model message, its history, rollback, status.

``publish`` turns a registry version into the design's retained message on
``cropwatch/v1/{farm}/_fleet/model/{name}`` (manifest, artifact URLs under the registry's base URL,
rollout policy) and appends it to a small history kept in the registry folder
(``ROOT/.rollouts/{farm}/{name}.json``). ``rollback`` republishes the version before the current
one with ``allow_downgrade``; ``promote`` republishes the current one to every device. Which
devices take a message is decided by :func:`shared.rollout.selects`, the same function the agent
runs. ``rollout_status`` reads what devices report from the monitor database.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from shared.fsutil import atomic_write_text
from shared.messages import Artifact, DesiredModel, RolloutPolicy
from shared.rollout import selects
from shared.topics import fleet_model_topic

from .registry import Registry, RegistryError

Publisher = Callable[[str, bytes], None]
ROLLOUT_EVENTS = ("model_downloading", "model_verifying", "model_trial", "model_active", "model_rejected",
                  "model_rolled_back")  # fmt: skip


def history_path(registry: Registry, farm: str, name: str) -> Path:
    fleet_model_topic(farm, name)  # validates both ids before they become a path
    return registry.root / ".rollouts" / farm / f"{name}.json"


def read_history(registry: Registry, farm: str, name: str) -> list[dict[str, Any]]:
    path = history_path(registry, farm, name)
    return json.loads(path.read_text()) if path.exists() else []


def _write_history(registry: Registry, farm: str, name: str, records: list[dict[str, Any]]) -> None:
    path = history_path(registry, farm, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(records, indent=1))


def _current(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    live = [r for r in records if not r.get("undone")]
    return live[-1] if live else None


def build_desired(
    registry: Registry,
    name: str,
    version: str,
    farm: str,
    base_url: str,
    policy: RolloutPolicy,
    previous_version: str | None = None,
    allow_downgrade: bool = False,
) -> DesiredModel:
    entry = registry.get(name, version)
    if entry.retired:
        raise RegistryError(f"{name} {version} is retired ({entry.retired.get('reason')}); publish another version")
    base = base_url.rstrip("/")
    artifacts = [
        Artifact(variant=f.variant, url=f"{base}/{name}/{version}/{f.path}", sha256=f.sha256, size=f.size)
        for f in entry.manifest.files
    ]
    return DesiredModel(
        farm_id=farm,
        model_name=name,
        version=version,
        manifest=entry.manifest,
        artifacts=artifacts,
        rollout=policy,
        previous_version=previous_version if previous_version != version else None,
        allow_downgrade=allow_downgrade,
    )


def _send(desired: DesiredModel, publisher: Publisher) -> None:
    publisher(fleet_model_topic(desired.farm_id, desired.model_name), desired.to_json())


def _record(desired: DesiredModel, base_url: str, action: str) -> dict[str, Any]:
    return {
        "action": action,
        "version": desired.version,
        "msg_id": desired.msg_id,
        "published_at": desired.observed_at.isoformat(),
        "base_url": base_url,
        "rollout": desired.rollout.model_dump(mode="json"),
        "allow_downgrade": desired.allow_downgrade,
    }


def publish(
    registry: Registry,
    name: str,
    version: str,
    farm: str,
    base_url: str,
    publisher: Publisher,
    policy: RolloutPolicy | None = None,
    allow_downgrade: bool = False,
    action: str = "publish",
) -> DesiredModel:
    """Publish ``version`` as the farm's desired model and append it to the history."""
    records = read_history(registry, farm, name)
    current = _current(records)
    desired = build_desired(
        registry, name, version, farm, base_url, policy or RolloutPolicy(),
        previous_version=current["version"] if current else None, allow_downgrade=allow_downgrade,
    )  # fmt: skip
    _send(desired, publisher)
    _write_history(registry, farm, name, [*records, _record(desired, base_url, action)])
    return desired


def rollback(
    registry: Registry, name: str, farm: str, publisher: Publisher, base_url: str | None = None
) -> DesiredModel:
    """Undo the current publish: the version before it becomes desired again, downgrade allowed."""
    records = read_history(registry, farm, name)
    live = [i for i, r in enumerate(records) if not r.get("undone")]
    if not live:
        raise RegistryError(f"nothing was published for {name} on farm {farm}; nothing to roll back")
    current = records[live[-1]]
    target = next((records[i] for i in reversed(live[:-1]) if records[i]["version"] != current["version"]), None)
    if target is None:
        raise RegistryError(f"{name} on farm {farm} has no earlier version to roll back to")
    desired = build_desired(
        registry, name, target["version"], farm, base_url or target["base_url"],
        RolloutPolicy.model_validate(target["rollout"]), previous_version=current["version"], allow_downgrade=True,
    )  # fmt: skip
    _send(desired, publisher)
    for i in live:
        if i > records.index(target):
            records[i] = {**records[i], "undone": True}
    # The rollback record is live: a second rollback undoes it and goes one step further back.
    _write_history(registry, farm, name, [*records, _record(desired, base_url or target["base_url"], "rollback")])
    return desired


def promote(
    registry: Registry, name: str, farm: str, publisher: Publisher, base_url: str | None = None
) -> DesiredModel:
    """Widen the current publish to every device of the farm."""
    current = _current(read_history(registry, farm, name))
    if current is None:
        raise RegistryError(f"nothing was published for {name} on farm {farm}; publish a version first")
    return publish(
        registry, name, current["version"], farm, base_url or current["base_url"], publisher,
        RolloutPolicy(mode=current["rollout"]["mode"]), allow_downgrade=current.get("allow_downgrade", False),
        action="promote",
    )  # fmt: skip


def desired_for(records: list[dict[str, Any]], name: str, device_id: str, groups: tuple[str, ...] = ()) -> str | None:
    """The version a device should run: the newest live publish whose policy selects it."""
    for r in reversed(records):
        if r.get("undone"):
            continue
        if selects(RolloutPolicy.model_validate(r["rollout"]), name, device_id, groups):
            return r["version"]
    return None


def rollout_status(db_url: str, farm: str, name: str, registry: Registry | None = None) -> list[dict[str, Any]]:
    """One row per device of the farm: desired, active, state (with reason), since."""
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            devices = [
                r[0] for r in conn.execute(text("SELECT device_id FROM devices WHERE farm_id = :f"), {"f": farm})
            ]
            models = {
                r.device_id: r
                for r in conn.execute(
                    text(
                        "SELECT device_id, desired_version, active_version, state, state_since FROM device_models "
                        "WHERE farm_id = :f AND model_name = :n AND role = 'champion'"
                    ),
                    {"f": farm, "n": name},
                )
            }
            placeholders = ", ".join(f":c{i}" for i in range(len(ROLLOUT_EVENTS)))
            events: dict[str, Any] = {}
            for r in conn.execute(
                text(
                    f"SELECT device_id, observed_at, code, details FROM events WHERE farm_id = :f "
                    f"AND code IN ({placeholders}) ORDER BY observed_at"
                ),
                {"f": farm, **{f"c{i}": c for i, c in enumerate(ROLLOUT_EVENTS)}},
            ):
                details = r.details if isinstance(r.details, dict) else json.loads(r.details or "{}")
                if details.get("model") == name:
                    events[r.device_id] = (r.observed_at, details)
    finally:
        engine.dispose()
    records = read_history(registry, farm, name) if registry is not None else []
    rows = []
    for device in sorted(set(devices) | set(models)):
        m = models.get(device)
        desired = desired_for(records, name, device) if records else (m.desired_version if m else None)
        state = m.state if m else None
        since: Any = m.state_since if m else None
        ev = events.get(device)
        # An update in progress or refused is newer news than the serving model's state.
        in_progress = ev is not None and ev[1].get("state") in ("downloading", "verifying", "rejected", "rolled_back")
        if ev is not None and in_progress and (since is None or _as_dt(ev[0]) >= _as_dt(since)):
            state = f"{ev[1]['state']} {ev[1].get('version', '')}".strip()
            if ev[1].get("reason"):
                state += f" ({ev[1]['reason']})"
            since = ev[0]
        rows.append(
            {
                "device": device,
                "desired": desired or "-",
                "active": (m.active_version if m else None) or "-",
                "state": state or "-",
                "since": _as_dt(since).strftime("%Y-%m-%d %H:%M:%S") if since else "-",
            }
        )
    return rows


def _as_dt(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    return datetime.fromisoformat(str(value)).replace(tzinfo=None)
