"""The monitor's view of a rollout: ``device_models.desired_*`` rows and the per-device rollout table.

Publishing records, for every device of the farm that the policy selects, which version it should
run and who asked (``record_desired``); ``rollout_status`` joins that with what devices report
(``device_models.active_*``, rollout events) for ``cropwatch models status``. Both go through the
ORM models of ``farm_monitor.db``; nothing here writes SQL text.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.dialects import postgresql, sqlite

from farm_monitor.db import make_engine
from farm_monitor.db.models import Device, DeviceModel, EventRow, ModelRow
from shared.ids import utcnow
from shared.manifest import ModelManifest
from shared.messages import RolloutPolicy
from shared.rollout import selects

from .history import desired_for, read_history
from .registry import Registry

logger = logging.getLogger(__name__)
ROLLOUT_EVENTS = ("model_downloading", "model_verifying", "model_trial", "model_active", "model_rejected",
                  "model_rolled_back", "model_unloaded")  # fmt: skip
# An update in progress or refused is newer news than the serving model's state.
_IN_PROGRESS = ("downloading", "verifying", "rejected", "rolled_back", "unloaded")
_KEY = ("farm_id", "device_id", "model_name", "role")


def _upsert_desired(engine: Engine) -> Any:
    """INSERT ... ON CONFLICT DO UPDATE of the desired columns, in the engine's dialect."""
    dialect = sqlite if engine.dialect.name == "sqlite" else postgresql
    stmt = dialect.insert(DeviceModel)
    return stmt.on_conflict_do_update(
        index_elements=list(_KEY),
        set_={
            "desired_version": stmt.excluded.desired_version,
            "desired_at": stmt.excluded.desired_at,
            "desired_by": stmt.excluded.desired_by,
        },
    )


def record_desired(
    db_url: str, farm: str, name: str, role: str, version: str | None, policy: RolloutPolicy | None, by: str | None
) -> int:
    """Write ``device_models.desired_*`` for the farm's devices in the monitor database that ``policy`` selects.

    ``policy`` None means every device (``version`` None clears the desire, as ending a shadow run
    does). The database does not know devices' rollout groups, so a ``group`` policy selects none
    there. Returns the number of devices written.
    """
    engine = make_engine(db_url, writer=True)
    try:
        with engine.begin() as conn:
            devices = conn.execute(select(Device.device_id).where(Device.farm_id == farm)).scalars().all()
            chosen = [d for d in devices if policy is None or selects(policy, name, d)]
            at, who = utcnow(), (by or "")[:128] or None
            if chosen and version is None:
                # Clearing a desire only touches rows that exist: a NULL row for every device would
                # outlive the run (ingest removes ended shadow rows by their report time).
                conn.execute(
                    update(DeviceModel)
                    .where(
                        DeviceModel.farm_id == farm,
                        DeviceModel.device_id.in_(chosen),
                        DeviceModel.model_name == name,
                        DeviceModel.role == role,
                    )
                    .values(desired_version=None, desired_at=at, desired_by=who)
                )
            elif chosen:
                rows = [
                    {"farm_id": farm, "device_id": d, "model_name": name, "role": role, "desired_version": version,
                     "desired_at": at, "desired_by": who}
                    for d in chosen
                ]  # fmt: skip
                conn.execute(_upsert_desired(engine), rows)
    finally:
        engine.dispose()
    return len(chosen)


def record_model(db_url: str, manifest: ModelManifest) -> None:
    """Keep the published manifest in the monitor's ``models`` table (one row per name and version):
    the monitor reads the model's display names from it."""
    engine = make_engine(db_url, writer=True)
    dialect = sqlite if engine.dialect.name == "sqlite" else postgresql
    row = {
        "name": manifest.name, "version": manifest.version, "task": manifest.task, "sha256": manifest.sha256,
        "manifest": manifest.model_dump(mode="json"), "created_at": manifest.created_at, "registered_at": utcnow(),
    }  # fmt: skip
    stmt = dialect.insert(ModelRow).values(row)
    # A version's manifest never changes (the registry refuses that), so a second publish only notes the time.
    stmt = stmt.on_conflict_do_update(
        index_elements=["name", "version"], set_={"registered_at": stmt.excluded.registered_at}
    )
    try:
        with engine.begin() as conn:
            conn.execute(stmt)
    finally:
        engine.dispose()


def _read_status(
    engine: Engine, farm: str, name: str
) -> tuple[list[str], dict[tuple[str, str], Any], dict[tuple[str, str], Any]]:
    """The farm's devices, their ``device_models`` rows and their latest rollout event, by (device, role)."""
    with engine.connect() as conn:
        devices = list(conn.execute(select(Device.device_id).where(Device.farm_id == farm)).scalars())
        models = {
            (r.device_id, r.role): r
            for r in conn.execute(
                select(
                    DeviceModel.device_id, DeviceModel.role, DeviceModel.desired_version, DeviceModel.desired_at,
                    DeviceModel.active_version, DeviceModel.state, DeviceModel.state_since,
                ).where(DeviceModel.farm_id == farm, DeviceModel.model_name == name)
            )
        }  # fmt: skip
        events: dict[tuple[str, str], Any] = {}
        for r in conn.execute(
            select(EventRow.device_id, EventRow.observed_at, EventRow.details)
            .where(EventRow.farm_id == farm, EventRow.code.in_(ROLLOUT_EVENTS))
            .order_by(EventRow.observed_at)
        ):
            details = r.details if isinstance(r.details, dict) else json.loads(r.details or "{}")
            if details.get("model") == name:
                events[(r.device_id, details.get("role") or "champion")] = (r.observed_at, details)
    return devices, models, events


def _status_row(device: str, role: str, desired: str | None, m: Any, ev: Any) -> dict[str, str]:
    state = m.state if m else None
    since: Any = m.state_since if m else None
    in_progress = ev is not None and ev[1].get("state") in _IN_PROGRESS
    active = (m.active_version if m else None) or "-"
    if ev is not None and in_progress and (since is None or _as_dt(ev[0]) >= _as_dt(since)):
        if ev[1]["state"] == "unloaded":
            active = "-"  # the device reports no challenger any more; its old row is history
        state = f"{ev[1]['state']} {ev[1].get('version', '')}".strip()
        if ev[1].get("reason"):
            state += f" ({ev[1]['reason']})"
        since = ev[0]
    return {
        "device": device,
        "role": role,
        "desired": desired or "-",
        "active": active,
        "state": state or "-",
        "since": _as_dt(since).strftime("%Y-%m-%d %H:%M:%S") if since else "-",
    }


def rollout_status(db_url: str, farm: str, name: str, registry: Registry | None = None) -> list[dict[str, str]]:
    """One row per device of the farm and role (champion, and shadow where a challenger is desired
    or reported): desired, active, state (with reason), since."""
    engine = make_engine(db_url)
    try:
        devices, models, events = _read_status(engine, farm, name)
    finally:
        engine.dispose()
    records = read_history(registry, farm, name) if registry is not None else []
    rows = []
    for device in sorted(set(devices) | {d for d, _ in models}):
        for role in ("champion", "shadow"):
            m = models.get((device, role))
            # What publish --db recorded wins; otherwise it is computed from the registry's history.
            desired: str | None
            if m is not None and m.desired_at is not None:
                desired = m.desired_version
            elif records:
                desired = desired_for(records, name, device, role=role)
            else:
                desired = m.desired_version if m else None
            ev = events.get((device, role))
            if role == "shadow" and desired is None and ev is None and (m is None or m.active_version is None):
                continue
            rows.append(_status_row(device, role, desired, m, ev))
    return rows


def _as_dt(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    return datetime.fromisoformat(str(value)).replace(tzinfo=None)
