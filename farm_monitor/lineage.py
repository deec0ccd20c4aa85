"""Retraining lineage in the monitor database: detection -> model version -> training run -> labels.

``cropwatch retrain disease`` writes one ``training_runs`` row per run (model version, base
version, dataset fingerprint, gate result, status) and one ``training_run_labels`` row per field
sample it considered (the label as it was then: who labelled it and when, and what the run did with
it). Detections already carry model name, version and sha256, so the chain is joins only. The
monitor's Retraining page and ``cropwatch retrain tick`` read it through these functions.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, delete, func, select, text, update

from .db.dialect import sqlite_timestamp as _sqlite_ts
from .db.models import LabelRow, SampleRow, TrainingRun, TrainingRunLabel

logger = logging.getLogger(__name__)

# error: the run stopped before the gate (too few labels, all duplicates, export failed); it is
# recorded with labels_until so the tick waits for new labels instead of failing on every run.
RUN_STATUSES = ("error", "gate_failed", "candidate", "shadow", "promoted", "superseded")
LABEL_ROLES = ("train", "val", "field_test", "duplicate", "unknown_class")


def _aware(value: Any) -> datetime | None:
    """SQLite gives naive UTC (or text), PostgreSQL aware datetimes: both become aware UTC."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        value = datetime.fromisoformat(str(value))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def record_run(engine: Engine, run: dict[str, Any], labels: list[dict[str, Any]]) -> None:
    """Insert (or replace, for a re-recorded run id) a run and its labels in one transaction."""
    now = datetime.now(UTC)
    row = {**run, "status_at": run.get("status_at", now)}
    with engine.begin() as conn:
        conn.execute(delete(TrainingRunLabel).where(TrainingRunLabel.run_id == run["run_id"]))
        conn.execute(delete(TrainingRun).where(TrainingRun.run_id == run["run_id"]))
        conn.execute(TrainingRun.__table__.insert().values(**row))
        if labels:
            conn.execute(TrainingRunLabel.__table__.insert(), [{"run_id": run["run_id"], **r} for r in labels])
    logger.info("recorded training run %s (%d field labels)", run["run_id"], len(labels))


def set_status(engine: Engine, run_id: str, status: str, reason: str | None = None, at: datetime | None = None) -> None:
    if status not in RUN_STATUSES:
        raise ValueError(f"unknown run status {status!r}; one of {', '.join(RUN_STATUSES)}")
    with engine.begin() as conn:
        conn.execute(
            update(TrainingRun)
            .where(TrainingRun.run_id == run_id)
            .values(status=status, status_at=at or datetime.now(UTC), status_reason=reason)
        )


def _run_dict(r: Any) -> dict[str, Any]:
    d = dict(r._mapping)
    for k in ("created_at", "labels_until", "status_at"):
        d[k] = _aware(d.get(k))
    for k in ("gate", "counts"):
        d[k] = _json(d.get(k))
    d["gate_passed"] = bool(d["gate_passed"])
    return d


def runs(engine: Engine, model_name: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """Newest first."""
    stmt = select(TrainingRun.__table__).order_by(TrainingRun.created_at.desc()).limit(limit)
    if model_name:
        stmt = stmt.where(TrainingRun.model_name == model_name)
    with engine.connect() as conn:
        return [_run_dict(r) for r in conn.execute(stmt)]


def latest_run(engine: Engine, model_name: str, statuses: tuple[str, ...] | None = None) -> dict[str, Any] | None:
    stmt = select(TrainingRun.__table__).where(TrainingRun.model_name == model_name)
    if statuses:
        stmt = stmt.where(TrainingRun.status.in_(statuses))
    stmt = stmt.order_by(TrainingRun.created_at.desc()).limit(1)
    with engine.connect() as conn:
        r = conn.execute(stmt).first()
    return _run_dict(r) if r is not None else None


def run_for_version(engine: Engine, model_name: str, version: str) -> dict[str, Any] | None:
    stmt = (
        select(TrainingRun.__table__)
        .where(TrainingRun.model_name == model_name, TrainingRun.model_version == version)
        .order_by(TrainingRun.created_at.desc())
        .limit(1)
    )
    with engine.connect() as conn:
        r = conn.execute(stmt).first()
    return _run_dict(r) if r is not None else None


def run_labels(engine: Engine, run_id: str) -> list[dict[str, Any]]:
    """The run's labels, each with its sample's ``farm_id`` (None once the sample is deleted) for access checks."""
    stmt = (
        select(TrainingRunLabel.__table__, SampleRow.farm_id)
        .select_from(
            TrainingRunLabel.__table__.outerjoin(SampleRow, SampleRow.msg_id == TrainingRunLabel.sample_msg_id)
        )
        .where(TrainingRunLabel.run_id == run_id)
        .order_by(TrainingRunLabel.role, TrainingRunLabel.labelled_at)
    )
    with engine.connect() as conn:
        out = [dict(r._mapping) for r in conn.execute(stmt)]
    for r in out:
        r["labelled_at"] = _aware(r["labelled_at"])
    return out


def labels_since(engine: Engine, since: datetime | None, farms: list[str] | None = None) -> int:
    """How many labels were entered after ``since`` (all of them when None), optionally for some farms."""
    sql = "SELECT COUNT(*) FROM labels l JOIN samples s ON s.msg_id = l.sample_msg_id WHERE 1 = 1"
    params: dict[str, Any] = {}
    if since is not None:
        sql += " AND l.labelled_at > :since"
        params["since"] = _sqlite_ts(since) if engine.dialect.name == "sqlite" else since
    if farms:
        sql += " AND s.farm_id IN (" + ", ".join(f":f{i}" for i in range(len(farms))) + ")"
        params.update({f"f{i}": f for i, f in enumerate(farms)})
    with engine.connect() as conn:
        return int(conn.execute(text(sql), params).scalar() or 0)


def newest_label_time(engine: Engine) -> datetime | None:
    with engine.connect() as conn:
        return _aware(conn.execute(select(func.max(LabelRow.labelled_at))).scalar())


def detection_lineage(engine: Engine, farm: str, detection_msg_id: str) -> dict[str, Any] | None:
    """A detection, the model version that made it, that version's run and the run's labels (None: not found)."""
    with engine.connect() as conn:
        det = conn.execute(
            text(
                "SELECT msg_id, farm_id, device_id, observed_at, model_name, model_version, model_sha256, "
                "model_variant, label, confidence, shadow FROM detections WHERE msg_id = :m AND farm_id = :f"
            ),
            {"m": detection_msg_id, "f": farm},
        ).first()
    if det is None:
        return None
    detection = dict(det._mapping)
    detection["observed_at"] = _aware(detection["observed_at"])
    detection["shadow"] = _json(detection["shadow"])
    return {"detection": detection, **version_lineage(engine, detection["model_name"], detection["model_version"])}


def version_lineage(engine: Engine, model_name: str, version: str) -> dict[str, Any]:
    """The run that produced ``version`` (None for a model not made by retraining) and its labels."""
    run = run_for_version(engine, model_name, version)
    return {
        "model": {"name": model_name, "version": version},
        "run": run,
        "labels": run_labels(engine, run["run_id"]) if run else [],
    }
