"""Publishing models to farms: the retained desired-model message, its history, rollback, status.

``publish`` turns a registry version into the design's retained message on
``cropwatch/v1/{farm}/_fleet/model/{name}`` (manifest, artifact URLs under the registry's base URL,
rollout policy) and appends it to a small history kept in the registry folder
(``ROOT/.rollouts/{farm}/{name}.json``). ``rollback`` republishes the version before the current
one with ``allow_downgrade``; ``promote`` republishes the current one to every device. Which
devices take a message is decided by :func:`shared.rollout.selects`, the same function the agent
runs. ``rollout_status`` reads what devices report from the monitor database.

Options of every publishing function: ``signing_key`` (an Ed25519 private key) signs the whole
message envelope (``DesiredModel.signature``), so the policy, URLs and downgrade flag cannot be
changed on the way; ``db_url`` (the monitor database) records ``device_models.desired_*`` for every
device of the farm the policy selects, with ``by`` as who asked.

Shadow runs: a policy with ``mode="shadow"`` goes to ``_fleet/shadow/{name}`` instead, so the
champion's retained message stays what a new device needs. Its records sit in the same history
(``rollout.mode`` tells them apart). ``end_shadow`` clears that retained message (devices unload
the challenger); ``promote`` with a live shadow run makes the challenger the champion of every
device and ends the run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from shared.fsutil import atomic_write_text
from shared.messages import Artifact, DesiredModel, RolloutPolicy
from shared.rollout import is_newer, selects
from shared.topics import fleet_model_topic, fleet_shadow_topic

from .registry import Registry, RegistryError

logger = logging.getLogger(__name__)
Publisher = Callable[[str, bytes], None]
ROLLOUT_EVENTS = ("model_downloading", "model_verifying", "model_trial", "model_active", "model_rejected",
                  "model_rolled_back", "model_unloaded")  # fmt: skip


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


def is_shadow(record: dict[str, Any]) -> bool:
    return record.get("rollout", {}).get("mode") == "shadow"


def current_champion(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The live champion publish (shadow records are a separate track)."""
    live = [r for r in records if not r.get("undone") and not is_shadow(r)]
    return live[-1] if live else None


def current_shadow(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The live shadow run, or None when none was started or the last one was ended."""
    shadows = [r for r in records if is_shadow(r)]
    return shadows[-1] if shadows and shadows[-1]["action"] != "end_shadow" else None


def build_desired(
    registry: Registry,
    name: str,
    version: str,
    farm: str,
    base_url: str,
    policy: RolloutPolicy,
    previous_version: str | None = None,
    allow_downgrade: bool = False,
    signing_key: Any = None,
) -> DesiredModel:
    entry = registry.get(name, version)
    if entry.retired:
        raise RegistryError(f"{name} {version} is retired ({entry.retired.get('reason')}); publish another version")
    base = base_url.rstrip("/")
    artifacts = [
        Artifact(variant=f.variant, url=f"{base}/{name}/{version}/{f.path}", sha256=f.sha256, size=f.size)
        for f in entry.manifest.files
    ]
    desired = DesiredModel(
        farm_id=farm,
        model_name=name,
        version=version,
        manifest=entry.manifest,
        artifacts=artifacts,
        rollout=policy,
        previous_version=previous_version if previous_version != version else None,
        allow_downgrade=allow_downgrade,
    )
    return desired.signed(signing_key) if signing_key is not None else desired


def record_desired(
    db_url: str, farm: str, name: str, role: str, version: str | None, policy: RolloutPolicy | None, by: str | None
) -> int:
    """Write ``device_models.desired_*`` for the farm's devices in the monitor database that ``policy`` selects.

    ``policy`` None means every device (``version`` None clears the desire, as ending a shadow run
    does). The database does not know devices' rollout groups, so a ``group`` policy selects none
    there. Returns the number of devices written.
    """
    from sqlalchemy import DateTime, bindparam, create_engine, text

    from shared.ids import utcnow

    upsert = text(
        "INSERT INTO device_models (farm_id, device_id, model_name, role, desired_version, desired_at, desired_by) "
        "VALUES (:f, :d, :n, :r, :v, :at, :by) ON CONFLICT (farm_id, device_id, model_name, role) DO UPDATE SET "
        "desired_version = excluded.desired_version, desired_at = excluded.desired_at, "
        "desired_by = excluded.desired_by"
    ).bindparams(bindparam("at", type_=DateTime(timezone=True)))
    clear = text(
        "UPDATE device_models SET desired_version = NULL, desired_at = :at, desired_by = :by "
        "WHERE farm_id = :f AND device_id = :d AND model_name = :n AND role = :r"
    ).bindparams(bindparam("at", type_=DateTime(timezone=True)))
    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            devices = [
                r[0] for r in conn.execute(text("SELECT device_id FROM devices WHERE farm_id = :f"), {"f": farm})
            ]
            chosen = [d for d in devices if policy is None or selects(policy, name, d)]
            at = utcnow()
            rows = [
                {"f": farm, "d": d, "n": name, "r": role, "v": version, "at": at, "by": (by or "")[:128] or None}
                for d in chosen
            ]
            if rows:
                # Clearing a desire only touches rows that exist: a NULL row for every device would
                # outlive the run (ingest removes ended shadow rows by their report time).
                conn.execute(clear if version is None else upsert, rows)
    finally:
        engine.dispose()
    return len(chosen)


def topic_for(desired: DesiredModel) -> str:
    if desired.rollout.mode == "shadow":
        return fleet_shadow_topic(desired.farm_id, desired.model_name)
    return fleet_model_topic(desired.farm_id, desired.model_name)


def _deliver(
    registry: Registry,
    desired: DesiredModel,
    publisher: Publisher,
    history: list[dict[str, Any]],
    db_url: str | None,
    by: str | None,
) -> None:
    """Publish, then record the history, then the monitor's desired rows: in that order, so a
    failure can only ever leave later steps undone, never a history that disagrees with devices."""
    publisher(topic_for(desired), desired.to_json())
    _write_history(registry, desired.farm_id, desired.model_name, history)
    role = "shadow" if desired.rollout.mode == "shadow" else "champion"
    _note_desired(db_url, desired.farm_id, desired.model_name, role, desired.version, desired.rollout, by)


def _note_desired(
    db_url: str | None,
    farm: str,
    name: str,
    role: str,
    version: str | None,
    policy: RolloutPolicy | None,
    by: str | None,
) -> None:
    """``record_desired`` after the publish and its history record: a database error then costs
    only the monitor's ``desired`` column, never the history that rollback and promote rely on."""
    if db_url is None:
        return
    from sqlalchemy.exc import SQLAlchemyError

    try:
        record_desired(db_url, farm, name, role, version, policy, by)
    except SQLAlchemyError as exc:
        logger.error(
            "published %s %s on farm %s, but device_models in %s was not updated (%s); the monitor shows the "
            "old desired version until the next publish with --db", name, version, farm, db_url, exc,
        )  # fmt: skip


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
    *,
    signing_key: Any = None,
    db_url: str | None = None,
    by: str | None = None,
) -> DesiredModel:
    """Publish ``version`` as the farm's desired model (or challenger, mode shadow) and record it."""
    records = read_history(registry, farm, name)
    policy = policy or RolloutPolicy()
    current = current_shadow(records) if policy.mode == "shadow" else current_champion(records)
    desired = build_desired(
        registry, name, version, farm, base_url, policy,
        previous_version=current["version"] if current else None, allow_downgrade=allow_downgrade,
        signing_key=signing_key,
    )  # fmt: skip
    _deliver(registry, desired, publisher, [*records, _record(desired, base_url, action)], db_url, by)
    return desired


def rollback(
    registry: Registry,
    name: str,
    farm: str,
    publisher: Publisher,
    base_url: str | None = None,
    *,
    signing_key: Any = None,
    db_url: str | None = None,
    by: str | None = None,
) -> DesiredModel:
    """Undo the current publish: the version before it becomes desired again, downgrade allowed."""
    records = read_history(registry, farm, name)
    live = [i for i, r in enumerate(records) if not r.get("undone") and not is_shadow(r)]
    if not live:
        raise RegistryError(f"nothing was published for {name} on farm {farm}; nothing to roll back")
    current = records[live[-1]]
    target = next((records[i] for i in reversed(live[:-1]) if records[i]["version"] != current["version"]), None)
    if target is None:
        raise RegistryError(f"{name} on farm {farm} has no earlier version to roll back to")
    desired = build_desired(
        registry, name, target["version"], farm, base_url or target["base_url"],
        RolloutPolicy.model_validate(target["rollout"]), previous_version=current["version"], allow_downgrade=True,
        signing_key=signing_key,
    )  # fmt: skip
    for i in live:
        if i > records.index(target):
            records[i] = {**records[i], "undone": True}
    # The rollback record is live: a second rollback undoes it and goes one step further back.
    history = [*records, _record(desired, base_url or target["base_url"], "rollback")]
    _deliver(registry, desired, publisher, history, db_url, by)
    return desired


def promote(
    registry: Registry,
    name: str,
    farm: str,
    publisher: Publisher,
    base_url: str | None = None,
    *,
    signing_key: Any = None,
    db_url: str | None = None,
    by: str | None = None,
) -> DesiredModel:
    """Make the live challenger the champion of every device (and end its run), or widen the current publish.

    A challenger older than the champion is promoted with ``allow_downgrade``: promoting it is the
    explicit decision a downgrade otherwise needs.
    """
    records = read_history(registry, farm, name)
    current = current_champion(records)
    challenger = current_shadow(records)
    if challenger is not None:
        version = challenger["version"]
        downgrade = current is not None and is_newer(current["version"], version)
        desired = publish(
            registry, name, version, farm, base_url or challenger["base_url"], publisher,
            RolloutPolicy(), allow_downgrade=downgrade, action="promote",
            signing_key=signing_key, db_url=db_url, by=by,
        )  # fmt: skip
        end_shadow(registry, name, farm, publisher, reason=f"promoted {version}", db_url=db_url, by=by)
        return desired
    if current is None:
        raise RegistryError(f"nothing was published for {name} on farm {farm}; publish a version first")
    return publish(
        registry, name, current["version"], farm, base_url or current["base_url"], publisher,
        RolloutPolicy(mode=current["rollout"]["mode"]), allow_downgrade=current.get("allow_downgrade", False),
        action="promote", signing_key=signing_key, db_url=db_url, by=by,
    )  # fmt: skip


def end_shadow(
    registry: Registry,
    name: str,
    farm: str,
    publisher: Publisher,
    reason: str = "ended",
    *,
    db_url: str | None = None,
    by: str | None = None,
) -> None:
    """Clear the retained shadow message: every device unloads the challenger of ``name``.

    The empty payload is sent even without a recorded run, so a stale retained challenger can be
    cleared too.
    """
    from shared.ids import new_msg_id, utcnow

    records = read_history(registry, farm, name)
    live = current_shadow(records)
    publisher(fleet_shadow_topic(farm, name), b"")
    record = {
        "action": "end_shadow",
        "version": live["version"] if live else None,
        "msg_id": new_msg_id(),
        "published_at": utcnow().isoformat(),
        "base_url": live["base_url"] if live else None,
        "rollout": {"mode": "shadow"},
        "reason": reason,
    }
    _write_history(registry, farm, name, [*records, record])
    _note_desired(db_url, farm, name, "shadow", None, None, by)


def desired_for(
    records: list[dict[str, Any]], name: str, device_id: str, groups: tuple[str, ...] = (), role: str = "champion"
) -> str | None:
    """The version a device should run (``role`` shadow: the challenger), by the records' policies."""
    if role == "shadow":
        live = current_shadow(records)
        if live is None:
            return None
        policy = RolloutPolicy.model_validate(live["rollout"])
        return live["version"] if selects(policy, name, device_id, groups) else None
    for r in reversed(records):
        if r.get("undone") or is_shadow(r):
            continue
        if selects(RolloutPolicy.model_validate(r["rollout"]), name, device_id, groups):
            return r["version"]
    return None


def rollout_status(db_url: str, farm: str, name: str, registry: Registry | None = None) -> list[dict[str, Any]]:
    """One row per device of the farm and role (champion, and shadow where a challenger is desired
    or reported): desired, active, state (with reason), since."""
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            devices = [
                r[0] for r in conn.execute(text("SELECT device_id FROM devices WHERE farm_id = :f"), {"f": farm})
            ]
            models = {
                (r.device_id, r.role): r
                for r in conn.execute(
                    text(
                        "SELECT device_id, role, desired_version, desired_at, active_version, state, state_since "
                        "FROM device_models WHERE farm_id = :f AND model_name = :n"
                    ),
                    {"f": farm, "n": name},
                )
            }
            placeholders = ", ".join(f":c{i}" for i in range(len(ROLLOUT_EVENTS)))
            events: dict[tuple[str, str], Any] = {}
            for r in conn.execute(
                text(
                    f"SELECT device_id, observed_at, code, details FROM events WHERE farm_id = :f "
                    f"AND code IN ({placeholders}) ORDER BY observed_at"
                ),
                {"f": farm, **{f"c{i}": c for i, c in enumerate(ROLLOUT_EVENTS)}},
            ):
                details = r.details if isinstance(r.details, dict) else json.loads(r.details or "{}")
                if details.get("model") == name:
                    events[(r.device_id, details.get("role") or "champion")] = (r.observed_at, details)
    finally:
        engine.dispose()
    records = read_history(registry, farm, name) if registry is not None else []
    rows = []
    for device in sorted(set(devices) | {d for d, _ in models}):
        for role in ("champion", "shadow"):
            m = models.get((device, role))
            # What publish --db recorded wins; otherwise it is computed from the registry's history.
            if m is not None and m.desired_at is not None:
                desired = m.desired_version
            elif records:
                desired = desired_for(records, name, device, role=role)
            else:
                desired = m.desired_version if m else None
            ev = events.get((device, role))
            if role == "shadow" and desired is None and ev is None and (m is None or m.active_version is None):
                continue
            state = m.state if m else None
            since: Any = m.state_since if m else None
            # An update in progress or refused is newer news than the serving model's state.
            in_progress = ev is not None and ev[1].get("state") in (
                "downloading", "verifying", "rejected", "rolled_back", "unloaded"
            )  # fmt: skip
            active = (m.active_version if m else None) or "-"
            if ev is not None and in_progress and (since is None or _as_dt(ev[0]) >= _as_dt(since)):
                if ev[1]["state"] == "unloaded":
                    active = "-"  # the device reports no challenger any more; its old row is history
                state = f"{ev[1]['state']} {ev[1].get('version', '')}".strip()
                if ev[1].get("reason"):
                    state += f" ({ev[1]['reason']})"
                since = ev[0]
            rows.append(
                {
                    "device": device,
                    "role": role,
                    "desired": desired or "-",
                    "active": active,
                    "state": state or "-",
                    "since": _as_dt(since).strftime("%Y-%m-%d %H:%M:%S") if since else "-",
                }
            )
    return rows


def _as_dt(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    return datetime.fromisoformat(str(value)).replace(tzinfo=None)
