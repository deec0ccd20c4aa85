"""Moves rows from the outbox to the broker; a row leaves only after a successful PUBACK.

With ``[outbox] hold_acked_s`` an acknowledged row is kept a while longer and sent again after a
reconnect, because a crashed broker forgets what it acknowledged since its last save
(edge_agent/held.py). An acknowledgement that cannot be written (a full disk) is tried again
each round; its rows stay in flight meanwhile, so they are not sent again.

At most ``max_inflight`` rows are unacknowledged at a time. While the link is down nothing is
published; rows already handed over stay in the MQTT session, which resends them first when the
link returns, so order within a kind holds across outages. A PUBACK with a failure reason code
(>= 0x80) marks the row ``refused``: it stays, is counted, and an error event says which message
was refused and why (at most one event per kind and reason code every ten minutes, so a broker
that refuses everything cannot fill the outbox with complaints about itself).

Batches (``[uplink] encoding = "cbor"`` with ``batch_max_messages`` > 1): pending rows of one kind
wait until there are ``batch_max_messages`` of them or the oldest has waited ``batch_max_delay_s``,
then go as one PUBLISH (shared/wire.py); its PUBACK acknowledges or refuses every row in it.
Samples are never batched. At shutdown (:meth:`wait_idle`) whatever waits goes at once.

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

from shared import wire
from shared.messages import MAX_PAYLOAD_BYTES, Event

from .held import AckHold
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
        content_type: str | None = None,
    ) -> int | None:
        """Hand a message over; ``on_ack`` receives the PUBACK reason code. None when it could not be sent.

        ``payload`` is the reference JSON, or an encoded payload when ``content_type`` names its form.
        """
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
        wire_settings: wire.WireSettings | None = None,
        clock: Callable[[], float] = time.time,
        retry_no_subscribers: bool = True,
        hold_acked_s: float = 0.0,
    ) -> None:
        self.retry_no_subscribers = retry_no_subscribers
        self.outbox = outbox
        self.held = AckHold(outbox, hold_acked_s)
        self.wire = wire_settings or wire.WireSettings()
        # The outbox's clock: a row's ``created`` is on it, and a batch's delay is measured from there.
        self.clock = clock
        self._flush = False
        self._next_due: float | None = None
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

    def on_connected(self) -> None:
        """The transport (re)connected: held rows go again (edge_agent/held.py)."""
        self.held.reconnected()
        self._kick.set()

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

    def settled(self) -> bool:
        """Nothing in flight and nothing due now (rows waiting for their batch may remain)."""
        if self.inflight():
            return False
        if not self.wire.batching or self.outbox.gate is not None:
            return not self.outbox.has_sendable()
        groups, _ = self._plan(self.outbox.next_batch(0, self._scan_limit()), self.clock(), flush=False)
        return not groups

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is in flight and nothing sendable is pending (used at shutdown)."""
        self._flush = True  # what waits for a batch goes now
        self.kick()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.inflight() == 0 and not self.outbox.has_sendable():
                return True
            if not self.transport.connected or time.monotonic() < self._hold_until:
                return False  # offline, or the broker has nobody to give them to: they wait on disk
            time.sleep(0.05)
        return False

    # --- callbacks from the MQTT thread -----------------------------------------------------

    def _on_ack(self, rows: list[Row], code: int) -> None:
        with self._lock:
            if code == NO_MATCHING_SUBSCRIBERS and self.retry_no_subscribers:
                self._unrouted.extend(rows)
            elif code < 0x80:
                self._acked.extend(row.id for row in rows)
            else:
                self._refused.extend((row, code) for row in rows)
        self._kick.set()

    # --- loop -------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._kick.clear()
            self._next_due = None
            try:
                self._flush_acks()
            except Exception:  # a full disk: rows stay in flight, the write is tried again next round
                logger.exception("sender could not record acknowledgements; retrying")
                self.count_error("sender_acks")
            try:
                sent = self._publish_some()
            except Exception:
                logger.exception("sender step failed; retrying")
                self.count_error("sender")
                sent = 0
            if not sent:
                wait = 5.0 if self._next_due is None else max(0.01, min(5.0, self._next_due - self.clock()))
                held = self._hold_until - time.monotonic()
                if held > 0:  # the broker had nobody for our last messages: pause before resending
                    wait = min(wait, max(0.05, held))
                self._kick.wait(wait)

    def _flush_acks(self) -> None:
        with self._lock:
            acked, self._acked = self._acked, []
            refused, self._refused = self._refused, []
            unrouted, self._unrouted = self._unrouted, []
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
        if acked:
            try:
                self.held.acked(acked)
            except Exception:
                # A full disk: the rows stay in flight (not sent again) and the write is tried next round.
                with self._lock:
                    self._acked[:0] = acked
                raise
            with self._lock:
                self._inflight.difference_update(acked)
        first_back = self.held.tend()
        if first_back is not None:
            with self._lock:
                self._last_id = min(self._last_id, first_back - 1)

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
        if self.wire.batching:
            return self._publish_batches(room, inflight)
        rows = self.outbox.sendable(after, room, inflight)
        sent = 0
        for row in rows:
            if not self._hand_over([row], row.payload, None):
                break
            sent += 1
        return sent

    def _hand_over(self, rows: list[Row], payload: bytes, content_type: str | None) -> bool:
        with self._lock:
            self._inflight.update(r.id for r in rows)
        on_ack = functools.partial(self._on_ack, rows)
        if content_type is None:
            mid = self.transport.publish(rows[0].topic, payload, qos=1, on_ack=on_ack)
        else:
            mid = self.transport.publish(rows[0].topic, payload, qos=1, on_ack=on_ack, content_type=content_type)
        if mid is None:
            with self._lock:
                self._inflight.difference_update(r.id for r in rows)
            return False
        with self._lock:
            self._last_id = max(self._last_id, *(r.id for r in rows))
        return True

    # --- batches ----------------------------------------------------------------------------

    def _scan_limit(self) -> int:
        return self.max_inflight + 4 * self.wire.batch_max_messages

    def _plan(self, rows: list[Row], now: float, flush: bool) -> tuple[list[list[Row]], float | None]:
        """The PUBLISHes due now (each one row or one kind's batch, oldest first) and when the next is due."""
        ready: list[list[Row]] = []
        waiting: dict[str, list[Row]] = {}
        limit, delay = self.wire.batch_max_messages, self.wire.batch_max_delay_s
        for row in rows:
            if row.kind in wire.UNBATCHED_KINDS:
                ready.append([row])
                continue
            group = waiting.setdefault(row.topic, [])
            group.append(row)
            if len(group) >= limit:
                ready.append(waiting.pop(row.topic))
        next_due: float | None = None
        for group in waiting.values():
            due = group[0].created + delay
            if flush or due <= now:
                ready.append(group)
            else:
                next_due = due if next_due is None else min(next_due, due)
        ready.sort(key=lambda g: g[0].id)
        return ready, next_due

    def _publish_batches(self, room: int, inflight: set[int]) -> int:
        rows = self.outbox.sendable(0, self._scan_limit(), inflight)
        # The budget gate charges a row when it releases it, so released rows go now: batches form
        # from what one release holds (a whole window's backlog at its opening), never wait for more.
        gated = self.outbox.gate is not None
        groups, self._next_due = self._plan(rows, self.clock(), self._flush or gated)
        sent = 0
        for group in groups:
            if sent and len(group) > room - sent:
                break
            for rows_out, payload, ctype in self._encode_group(group):
                if not self._hand_over(rows_out, payload, ctype):
                    return sent
                sent += len(rows_out)
        return sent

    def _encode_group(self, group: list[Row]) -> list[tuple[list[Row], bytes, str | None]]:
        """One batch PUBLISH for the group, or one per row when it is a single row or cannot be a batch."""
        if len(group) > 1:
            try:
                payload, ctype = wire.encode_batch([r.payload for r in group], self.wire)
            except Exception:  # a row that is not a valid message goes alone; ingest dead-letters it
                logger.warning("could not batch %d %s messages; sending them one by one", len(group), group[0].kind)
                self.count_error("batch_encode")
            else:
                if len(payload) <= MAX_PAYLOAD_BYTES:
                    return [(group, payload, ctype)]
        return [([r], r.payload, None) for r in group]
