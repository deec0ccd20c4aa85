"""Keeping what the broker acknowledged until the broker has had time to write it to disk.

Mosquitto answers a QoS 1 PUBLISH with PUBACK as soon as the message is in its memory, and writes
its queues to disk every ``autosave_interval`` (60 s in deploy/mosquitto.conf). A broker that is
killed or loses power forgets what it acknowledged since its last save, and the device, which
deleted those rows at the PUBACK, cannot send them again: the chaos soak (docs/chaos.md) lost 64
messages this way in 12 minutes. So an acknowledged row is kept, marked ``held``, for
``[outbox] hold_acked_s`` (longer than the broker's save interval), and every time the
connection to the broker is made again all held rows are sent again. A broker crash always breaks
the connection, so nothing it forgot is missed; ingest stores each msg_id once, so the copies a
mere reconnect sends cost bytes, not rows.

Ages are measured on the monotonic clock: a device clock that jumps forward must not release
rows early. Rows held when the agent starts (it stopped within the window) are held for a whole
window from then and go again at the first connection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .outbox import Outbox

logger = logging.getLogger(__name__)


class AckHold:
    """The held rows of one outbox, by the monotonic time of their PUBACK (used by the sender thread only)."""

    def __init__(self, outbox: Outbox, hold_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.outbox = outbox
        self.hold_s = hold_s
        self._clock = clock
        self._since: dict[int, float] = {}
        self._reconnected = False
        held = outbox.held_ids()
        if hold_s > 0:
            self._since = dict.fromkeys(held, clock())
        elif held:
            # Held by a run with the hold on: with it now off they would never be released; sending
            # them once more costs a few duplicates, which ingest drops.
            outbox.resend_held(held)

    @property
    def enabled(self) -> bool:
        return self.hold_s > 0

    def __len__(self) -> int:
        return len(self._since)

    def acked(self, ids: list[int]) -> None:
        self.outbox.acked(ids, hold=self.enabled)
        if self.enabled:
            now = self._clock()
            self._since.update(dict.fromkeys(ids, now))

    def reconnected(self) -> None:
        """Called from the transport's thread: the next :meth:`tend` sends every held row again."""
        self._reconnected = True

    def tend(self) -> int | None:
        """Release rows held long enough; after a reconnect, put all held rows back in line.

        Returns the smallest id put back in line (the sender resumes from there), or None.
        """
        if not self._since:
            self._reconnected = False
            return None
        if self._reconnected:
            self._reconnected = False
            ids = sorted(self._since)
            n = self.outbox.resend_held(ids)
            self._since.clear()
            if n:
                logger.info(
                    "connection to the broker renewed: sending again %d messages it acknowledged in the last %.0f s "
                    "(a broker that crashed has lost them; ingest stores each once)", n, self.hold_s,
                )  # fmt: skip
            return ids[0]
        cutoff = self._clock() - self.hold_s
        old = [row_id for row_id, at in self._since.items() if at <= cutoff]
        if old:
            self.outbox.release_held(old)  # a full disk raises here: they stay held and are tried again
            for row_id in old:
                del self._since[row_id]
        return None
