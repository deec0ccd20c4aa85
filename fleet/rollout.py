"""Publishing models to farms: the retained desired-model message, its history, rollback, status.

``publish`` turns a registry version into the design's retained message on
``cropwatch/v1/{farm}/_fleet/model/{name}`` (manifest, artifact URLs under the registry's base URL,
rollout policy) and appends it to a small history kept in the registry folder
(``ROOT/.rollouts/{farm}/{name}.json``). ``rollback`` republishes the version before the current
one with ``allow_downgrade``; ``promote`` republishes the current one to every device. Which
devices take a message is decided by :func:`shared.rollout.selects`, the same function the agent
runs. The history lives in :mod:`fleet.history`; the monitor's desired rows and the per-device
rollout table (``rollout_status``) in :mod:`fleet.desired`.

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

import logging
from typing import TYPE_CHECKING, Any

from shared import SCHEMA_VERSION
from shared.ids import new_msg_id, utcnow
from shared.manifest import ModelManifest
from shared.messages import Artifact, DesiredModel, RolloutPolicy
from shared.rollout import is_newer
from shared.topics import fleet_model_topic, fleet_shadow_topic

from .history import Record, current_champion, current_shadow, is_shadow, read_history, write_history
from .registry import Registry, RegistryError

if TYPE_CHECKING:  # the type only: publishing functions take any publisher, paho is not needed here
    from .mqtt_publish import Publisher

logger = logging.getLogger(__name__)


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
        schema_version=SCHEMA_VERSION,
        msg_id=new_msg_id(),
        observed_at=utcnow(),
        device_id="_fleet",
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


def topic_for(desired: DesiredModel) -> str:
    if desired.rollout.mode == "shadow":
        return fleet_shadow_topic(desired.farm_id, desired.model_name)
    return fleet_model_topic(desired.farm_id, desired.model_name)


def _deliver(
    registry: Registry,
    desired: DesiredModel,
    publisher: Publisher,
    history: list[Record],
    db_url: str | None,
    by: str | None,
) -> None:
    """Publish, then record the history, then the monitor's desired rows: in that order, so a
    failure can only ever leave later steps undone, never a history that disagrees with devices."""
    publisher(topic_for(desired), desired.to_json())
    write_history(registry, desired.farm_id, desired.model_name, history)
    role = "shadow" if desired.rollout.mode == "shadow" else "champion"
    _note_desired(db_url, desired.farm_id, desired.model_name, role, desired.version, desired.rollout, by,
                  desired.manifest)  # fmt: skip


def _note_desired(
    db_url: str | None,
    farm: str,
    name: str,
    role: str,
    version: str | None,
    policy: RolloutPolicy | None,
    by: str | None,
    manifest: ModelManifest | None = None,
) -> None:
    """``record_desired`` (and the manifest, for the monitor's display names) after the publish and
    its history record: a database error then costs only the monitor's ``desired`` column and names,
    never the history that rollback and promote rely on."""
    if db_url is None:
        return
    # Here, not at the top: publishing without --db needs neither SQLAlchemy nor the monitor.
    from sqlalchemy.exc import SQLAlchemyError

    from .desired import record_desired, record_model

    try:
        record_desired(db_url, farm, name, role, version, policy, by)
        if manifest is not None:
            record_model(db_url, manifest)
    except SQLAlchemyError as exc:
        logger.error(
            "published %s %s on farm %s, but device_models in %s was not updated (%s); the monitor shows the "
            "old desired version until the next publish with --db", name, version, farm, db_url, exc,
        )  # fmt: skip


def _record(desired: DesiredModel, base_url: str, action: str) -> Record:
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
    write_history(registry, farm, name, [*records, record])
    _note_desired(db_url, farm, name, "shadow", None, None, by)
