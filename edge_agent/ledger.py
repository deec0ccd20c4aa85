"""The message ledger: one line per message the agent created or dropped, for the chaos soak.

``[debug] ledger_path`` turns it on. The outbox appends a line after each commit: ``created``
for a stored message, ``dropped`` with the reason for one the drop policy removed (``budget``,
``expired``, ``disk_full``), and ``acked`` with the time for one the broker acknowledged. A
harness (bench/chaos.py) reconciles the lines with the database.

Each line is written with one ``write`` on a line-buffered file, so a SIGKILL loses nothing that
was written (the page cache keeps it). A power cut may lose the last lines, since the ledger is not
fsynced (that would double the agent's fsyncs); the reconciliation reports a stored message
missing from the ledger as ``unledgered``, not as an error. A line is written only after the
outbox commit, so a ledger line never names a message the outbox does not hold or account for.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from pathlib import Path

logger = logging.getLogger(__name__)


class Ledger:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._fh = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives as long as the agent

    def _write(self, lines: list[str]) -> None:
        if not lines:
            return
        with self._lock:
            try:
                self._fh.write("".join(lines))
                self._fh.flush()
            except (OSError, ValueError):
                # The ledger is a test aid: a full disk or a closed file must not stop the agent.
                logger.warning("ledger %s: write failed", self.path, exc_info=True)

    def created(self, messages: Iterable[tuple[str, str]]) -> None:
        self._write([f"created {msg_id} {kind}\n" for msg_id, kind in messages])

    def dropped(self, messages: Iterable[tuple[str, str]], reason: str) -> None:
        self._write([f"dropped {msg_id} {kind} {reason}\n" for msg_id, kind in messages])

    def acked(self, messages: Iterable[tuple[str, str]]) -> None:
        # The real time (not the device clock): the harness matches it against broker crashes.
        now = time.time()
        self._write([f"acked {msg_id} {kind} {now:.3f}\n" for msg_id, kind in messages])

    def close(self) -> None:
        with self._lock:
            self._fh.close()
