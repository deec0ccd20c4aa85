"""What the model updater needs from the agent it serves, and nothing more.

The updater never sees the agent itself: the daemon's ``Agent`` satisfies this protocol, and a
test may hand in any object that does.
"""

from __future__ import annotations

from typing import Protocol

from shared.messages import EventValue, LogLevel

from ..config import AgentConfig
from ..inference import InferenceBackend


class UpdaterHost(Protocol):
    @property
    def cfg(self) -> AgentConfig:
        """The running config (a reload replaces it, so read it when needed, never keep it)."""
        ...

    def event(self, level: LogLevel, code: str, message: str, details: dict[str, EventValue] | None = None) -> None:
        """Queue an ``event`` message for the monitor."""
        ...

    def count_error(self, code: str) -> None:
        """Count an error under ``code`` in the heartbeat."""
        ...

    def serving(self, task: str) -> InferenceBackend | None:
        """The model serving ``task`` now: the pipeline's champion, or the yield runner's model."""
        ...

    def serving_shadow(self) -> InferenceBackend | None:
        """The challenger running beside the champion now, if any."""
        ...

    def model_counts(self, backend: InferenceBackend) -> tuple[int, int]:
        """(batches or runs, failed ones) of ``backend`` since it was loaded."""
        ...

    def install_champion(
        self, new: InferenceBackend, old: InferenceBackend | None, fallback: InferenceBackend | None = None
    ) -> None:
        """Serve images with ``new`` in place of ``old`` (``fallback`` stays loaded for a trial).

        With no ``old``, image sources that waited for a first model start.
        """
        ...

    def install_yield(
        self, new: InferenceBackend, old: InferenceBackend | None, fallback: InferenceBackend | None = None
    ) -> None:
        """Run yield forecasts with ``new`` in place of ``old``; makes the yield runner if there was none."""
        ...

    def install_shadow(self, new: InferenceBackend | None) -> None:
        """Run ``new`` beside the champion in place of the current challenger (None: no challenger)."""
        ...

    def publish_status_soon(self) -> None:
        """Publish the retained status now rather than at the next heartbeat."""
        ...

    def run_yield_soon(self) -> None:
        """Run the yield model now rather than at its next scheduled time."""
        ...

    def check_models_in(self, delay_s: float) -> None:
        """Call the updater's ``check_health`` in ``delay_s`` seconds."""
        ...
