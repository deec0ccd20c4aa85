"""What every part of the updater shares: roles, tasks, the rejection, crash points, the report."""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Literal

from shared.messages import ActiveModel, DesiredModel, EventValue, LogLevel

from .host import UpdaterHost

logger = logging.getLogger(__name__)

Role = Literal["champion", "shadow"]
CHAMPION: Role = "champion"
SHADOW: Role = "shadow"
DISEASE, YIELD = "disease_classification", "yield_forecast"
# Fault injection for the crash-safety tests: CW_FAULT_CRASH_AT=<step> ends the process at that step.
CRASH_ENV = "CW_FAULT_CRASH_AT"  # not CROPWATCH_*: those are config overrides
CRASH_STEPS = ("downloaded", "verified", "staged", "trial_written", "swapped", "committed")
# States an update passes through before it serves (or instead of serving): the status lists them.
PENDING_STATES = ("downloading", "verifying", "rejected", "rolled_back")


def crash_point(step: str) -> None:
    if os.environ.get(CRASH_ENV) == step:
        logger.critical("%s=%s: exiting at this step on purpose", CRASH_ENV, step)
        logging.shutdown()
        os._exit(70)


def seen_key(d: DesiredModel) -> str:
    """Identifies a message for "seen it already": its msg_id and its content, so a copy altered
    under the same msg_id (rejected) does not hide the genuine message that follows."""
    return f"{d.msg_id}:{hashlib.sha256(d.to_json()).hexdigest()[:16]}"


class UpdateRejected(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Reporter:
    """Says what became of an update: an event for the monitor, and the status's list of pending updates."""

    def __init__(self, host: UpdaterHost) -> None:
        self._host = host
        # Per (model name, role): the latest update that is not the serving model (downloading ... rolled_back).
        self.pending: dict[tuple[str, str], ActiveModel] = {}

    def __call__(
        self,
        name: str,
        version: str,
        sha256: str | None,
        state: str,
        reason: str | None = None,
        level: LogLevel = "info",
        role: Role = CHAMPION,
        detail: str | None = None,
    ) -> None:
        key = (name, role)
        if state in PENDING_STATES and sha256 is not None:
            self.pending[key] = ActiveModel.model_validate(
                {"name": name, "version": version, "sha256": sha256, "state": state, "role": role}
            )
        elif state in ("active", "trial", "unloaded"):
            self.pending.pop(key, None)
        what = "shadow model" if role == SHADOW else "model"
        # The event says what to do, not only the reason code: operators read it in the monitor.
        text = f"{what} {name} {version}: {state}" + (f" ({reason})" if reason else "")
        text += f": {detail}" if detail else ""
        details: dict[str, EventValue] = {"model": name, "version": version, "state": state, "role": role}
        if reason:
            details["reason"] = reason[:256]
        self._host.event(level, f"model_{state}", text[:2000], details)
        self._host.publish_status_soon()  # the retained status shows the new state now, not at the next heartbeat
