"""The retained ``status`` message: its topic and the models it lists (the agent publishes it)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from shared.messages import ActiveModel, Health, Status

from .inference import InferenceBackend
from .pipeline import Identity, backend_variant
from .updater import ModelUpdater
from .version import AGENT_VERSION


def status_topic(identity: Identity) -> str:
    return identity.topic("status")


def listed_models(
    models: list[InferenceBackend], shadow: InferenceBackend | None, updater: ModelUpdater | None
) -> list[ActiveModel]:
    """What the status lists: updates in progress (or refused), then every loaded model."""
    # An update in progress (or refused) comes before the serving model of the same name, so a
    # reader that keeps one row per model name (ingest's device_models) ends on the serving one.
    listed = list(updater.pending.values()) if updater is not None else []
    listed += [
        ActiveModel(
            name=b.manifest.name,
            version=b.manifest.version,
            sha256=b.manifest.file(backend_variant(b)).sha256,
            variant=backend_variant(b),
            role="shadow" if b is shadow else "champion",
            state=updater.model_state(b) if updater is not None else "active",
        )
        for b in models
    ]
    return listed


def build_status(
    identity: Identity,
    state: Literal["online", "offline"],
    since: datetime,
    models: list[ActiveModel],
    next_contact_at: datetime | None,
    reason: str | None = None,
    health: Health | None = None,
) -> Status:
    return Status(
        **identity.envelope(),
        state=state,
        since=since,
        agent_version=AGENT_VERSION,
        models=models,
        health=health,
        reason=reason,
        next_contact_at=next_contact_at,
    )
