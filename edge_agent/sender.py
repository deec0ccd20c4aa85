"""Moves rows from the outbox to the broker and deletes them only on a successful PUBACK.

At most ``max_inflight`` rows are unacknowledged at a time. While the link is down nothing is
published; rows already handed over stay in the MQTT session, which resends them first when the
link returns, so order within a kind holds across outages. A PUBACK with a failure reason code
(>= 0x80) marks the row ``refused``: it stays, is counted, and an error event says which message
was refused and why (at most one event per kind and reason code every ten minutes, so a broker
that refuses everything cannot fill the outbox with complaints about itself).

A PUBACK with 0x10 "no matching subscribers" is a success code in MQTT, but for a reading it means
nobody got it: the broker dropped it. It happens when a broker restarts and devices reconnect
before ingest has subscribed again (Mosquitto 2.0 does not restore shared subscriptions from
its persistence; found by the chaos soak, bench/chaos.py). Such a row stays in the outbox and is
sent again after a pause (1 s, doubling to 30 s), so it waits for ingest instead of vanishing.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from shared.messages import Event

from .outbox import Outbox, Row
from .pipeline import Identity, to_out
from .transport import reason_name

logger = logging.getLogger(__name__)

REFUSAL_EVENT_EVERY_S = 600.0
NO_MATCHING_SUBSCRIBERS = 0x10
UNROUTED_RETRY_S = (1.0, 30.0)


class Transport(Protocol):
    """What the agent needs from a message transport (MQTT v5 in :mod:`edge_agent.transport`)."""

    @property
    def connected(self) -> bool: ...

    def start(self) -> None: ...

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        on_ack: Callable[[int], None] | None = None,
    ) -> int | None:
        """Hand a message over; ``on_ack`` receives the PUBACK reason code. None when it could not be sent."""
        ...

    def subscribe(
        self, topic_filter: str, handler: Callable[[str, bytes, bool], None], retained: bool = False
    ) -> None: ...

    def stop(self, last: tuple[str, bytes] | None = None, timeout: float = 3.0) -> None: ...


class Sender:
    def __init__(
        self,
        outbox: Outbox,
        transport: Transport,
        identity: Identity,
        max_inflight: int = 64,
        count_error: Callable[[str], None] = lambda code: None,
        retry_no_subscribers: bool = True,
    ) -> None:
        self.retry_no_subscribers = retry_no_subscribers
        self.outbox = outbox
        self.transport = transport
        self.identity = identity
        self.max_inflight = max_inflight
        self.count_error = count_error
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._inflight: set[int] = set()
        self._acked: list[int] = []
        self._refused: list[tuple[Row, int]] = []
        self._unrouted: list[Row] = []
        self._hold_until = 0.0
        self._unrouted_pause = UNROUTED_RETRY_S[0]
        self._last_id = 0
        self._last_refusal_event: dict[tuple[str, int], float] = {}
        self._refusals_since_event: dict[tuple[str, int], int] = {}
        self._thread: threading.Thread | None = None
        outbox_listeners = getattr(outbox, "listeners", None)
        if outbox_listeners is not None:
            outbox_listeners.append(self.kick)

    def kick(self) -> None:
        self._kick.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sender", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._kick.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._flush_acks()

    def requeue(self) -> int:
        """After a reload: refused rows get another chance, in their original order."""
        n = self.outbox.requeue_refused()
        with self._lock:
            self._last_id = 0
        self.kick()
        return n

    def inflight(self) -> int:
        with self._lock:
            return len(self._inflight)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is in flight and nothing sendable is pending (used at shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.inflight() == 0 and not self.outbox.next_batch(0, 1):
                return True
            if not self.transport.connected or time.monotonic() < self._hold_until:
                return False  # offline, or the broker has nobody to give them to: they wait on disk
            time.sleep(0.05)
        return False

    # --- callbacks from the MQTT thread -----------------------------------------------------

    def _on_ack(self, row: Row, code: int) -> None:
        with self._lock:
            if code == NO_MATCHING_SUBSCRIBERS and self.retry_no_subscribers:
                self._unrouted.append(row)
            elif code < 0x80:
                self._acked.append(row.id)
            else:
                self._refused.append((row, code))
        self._kick.set()

    # --- loop -------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._kick.clear()
            try:
                self._flush_acks()
                sent = self._publish_some()
            except Exception:
                logger.exception("sender step failed; retrying")
                self.count_error("sender")
                sent = 0
            if not sent:
                self._kick.wait(min(5.0, max(0.05, self._hold_until - time.monotonic())))

    def _flush_acks(self) -> None:
        with self._lock:
            acked, self._acked = self._acked, []
            refused, self._refused = self._refused, []
            unrouted, self._unrouted = self._unrouted, []
            for row_id in acked:
                self._inflight.discard(row_id)
            for row, _ in refused:
                self._inflight.discard(row.id)
            if acked and not unrouted:
                self._unrouted_pause = UNROUTED_RETRY_S[0]
            if unrouted:
                for row in unrouted:
                    self._inflight.discard(row.id)
                # Back in line from the first of them: sent again, in order, after the pause.
                self._last_id = min(self._last_id, min(r.id for r in unrouted) - 1)
                # One pause per round: the PUBACKs of one resent window must not double it each.
                if time.monotonic() >= self._hold_until:
                    self._hold_until = time.monotonic() + self._unrouted_pause
                    self._unrouted_pause = min(UNROUTED_RETRY_S[1], self._unrouted_pause * 2)
        if unrouted:
            logger.warning(
                "broker had no subscriber for %d messages (PUBACK 0x10); kept, sent again in %.0f s",
                len(unrouted), self._hold_until - time.monotonic(),
            )  # fmt: skip
            self.count_error("publish_no_subscribers")
        if acked:
            self.outbox.acked(acked)
        for row, code in refused:
            if not self.outbox.refused(row.id, code):
                continue
            logger.error(
                "broker refused %s %s on %s: %s (%d); kept in the outbox", row.kind, row.msg_id, row.topic,
                reason_name(code), code,
            )  # fmt: skip
            self.count_error("publish_refused")
            if row.kind != "event":
                self._refusal_event(row, code)

    def _refusal_event(self, row: Row, code: int) -> None:
        key = (row.kind, code)
        self._refusals_since_event[key] = self._refusals_since_event.get(key, 0) + 1
        now = time.monotonic()
        last = self._last_refusal_event.get(key)
        if last is not None and now - last < REFUSAL_EVENT_EVERY_S:
            return
        self._last_refusal_event[key] = now
        count, self._refusals_since_event[key] = self._refusals_since_event[key], 0
        event = Event(
            **self.identity.envelope(),
            level="error",
            code="publish_refused",
            message=(
                f"the broker refused a {row.kind} message ({reason_name(code)}, reason code {code}); "
                "it is kept in the outbox and retried after a config reload. Check the broker ACL and limits."
            ),
            details={"msg_id": row.msg_id, "kind": row.kind, "topic": row.topic, "reason_code": code, "count": count},
        )
        self.outbox.add([to_out(self.identity, event)])

    def _publish_some(self) -> int:
        if not self.transport.connected or time.monotonic() < self._hold_until:
            return 0
        with self._lock:
            room = self.max_inflight - len(self._inflight)
            after = self._last_id
            inflight = set(self._inflight)
        if room <= 0:
            return 0
        rows = [r for r in self.outbox.next_batch(after, room + len(inflight)) if r.id not in inflight][:room]
        sent = 0
        for row in rows:
            with self._lock:
                self._inflight.add(row.id)
            mid = self.transport.publish(row.topic, row.payload, qos=1, on_ack=functools.partial(self._on_ack, row))
            if mid is None:
                with self._lock:
                    self._inflight.discard(row.id)
                break
            with self._lock:
                self._last_id = max(self._last_id, row.id)
            sent += 1
        return sent
