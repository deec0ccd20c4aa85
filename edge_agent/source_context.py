"""What sources see of the agent (:class:`edge_agent.sources.SourceContext`), and nothing more."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from .outbox import Outbox
from .sources import ImageItem, ReadingsItem


class AgentSourceContext:
    """One per agent, shared by its sources: the pipeline's queue, the outbox's seen files, file claims.

    Claims live here, not in a source, so a claim survives the source's restart on reload.
    """

    def __init__(
        self,
        stop_event: threading.Event,
        work: queue.Queue[ImageItem | ReadingsItem | None],
        outbox: Outbox,
        count_error: Callable[[str], None],
        capture_allowed: Callable[[str], bool] = lambda source: True,
    ) -> None:
        self.stop_event = stop_event
        self._work = work
        self._outbox = outbox
        self._count_error = count_error
        self.capture_allowed = capture_allowed
        self._claims: set[tuple[str, str]] = set()
        self._claims_lock = threading.Lock()

    def submit(self, item: ImageItem | ReadingsItem) -> bool:
        while not self.stop_event.is_set():
            try:
                self._work.put(item, timeout=1.0)
                return True
            except queue.Full:  # back-pressure: the source waits for the pipeline
                continue
        return False

    def is_seen(self, source: str, key: str) -> bool:
        return self._outbox.is_seen(source, key)

    def claim(self, source: str, key: str) -> bool:
        """Reserve a file until its results are stored."""
        with self._claims_lock:
            if (source, key) in self._claims:
                return False
            self._claims.add((source, key))
            return True

    def release(self, source: str, key: str) -> None:
        with self._claims_lock:
            self._claims.discard((source, key))

    def count_error(self, code: str) -> None:
        self._count_error(code)
