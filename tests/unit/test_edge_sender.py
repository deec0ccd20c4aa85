"""The sender against a scripted transport (a real outbox file): window, order, acks, refusals."""

from __future__ import annotations

import threading
from pathlib import Path

from edge_agent.outbox import Outbox, OutMessage
from edge_agent.pipeline import Identity
from edge_agent.sender import Sender
from shared import wire
from shared.examples import example_messages
from shared.messages import parse_device_message
from tests.services import wait_for


class ScriptedTransport:
    """Connected; records publishes; the test decides each PUBACK reason code."""

    def __init__(self) -> None:
        self.connected = True
        self.published: list[tuple[str, bytes]] = []
        self.content_types: list[str | None] = []
        self.pending: list = []  # type: ignore[type-arg]
        self.lock = threading.Lock()

    def start(self) -> None:
        pass

    def publish(self, topic, payload, qos=1, retain=False, on_ack=None, content_type=None):  # type: ignore[no-untyped-def]
        with self.lock:
            self.published.append((topic, payload))
            self.content_types.append(content_type)
            self.pending.append(on_ack)
            return len(self.published)

    def subscribe(self, topic_filter, handler, retained=False) -> None:  # type: ignore[no-untyped-def]
        pass

    def stop(self, last=None, timeout=3.0) -> None:  # type: ignore[no-untyped-def]
        pass

    def ack_all(self, code: int = 0) -> int:
        with self.lock:
            pending, self.pending = self.pending, []
        for cb in pending:
            cb(code)
        return len(pending)


def test_window_order_acks_and_one_refusal_event(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", budget_bytes=10**9)
    transport = ScriptedTransport()
    sender = Sender(box, transport, Identity("farm1", "dev1"), max_inflight=4)
    sender.start()
    try:
        box.add([OutMessage(f"{i:026d}", "detection", f"t/{i}", b"{}") for i in range(10)])
        wait_for(lambda: len(transport.published) == 4, 5, what="a full window")
        assert sender.inflight() == 4  # nothing more until acks come back
        transport.ack_all(0)
        wait_for(lambda: len(transport.published) == 8, 5, what="the next window")
        assert [t for t, _ in transport.published] == [f"t/{i}" for i in range(8)]
        transport.ack_all(135)  # not authorised: kept, marked, one event for the lot
        wait_for(lambda: len(box.refused_rows()) == 4, 5, what="4 refused rows")
        wait_for(lambda: any(b"publish_refused" in p for _, p in transport.published), 5, what="refusal event")
        transport.ack_all(0)
        wait_for(lambda: box.stats()["depth"] == 4 and sender.inflight() == 0, 5, what="the rest delivered")
        events = [parse_device_message(p) for t, p in transport.published if t.endswith("/event")]
        assert len(events) == 1 and events[0].details["reason_code"] == 135
        assert box.counters()["sent"] == 4 + 2 + 1  # first window, rows 8-9, the event
        assert sender.requeue() == 4
        wait_for(lambda: len(transport.published) == 4 + 4 + 2 + 1 + 4, 5, what="refused rows retried")
        transport.ack_all(0)
        wait_for(lambda: box.stats()["depth"] == 0, 5, what="outbox empty")
    finally:
        sender.stop()


def test_batches_one_kind_per_publish_by_count_and_delay_and_acks_every_row(tmp_path: Path) -> None:
    now = [1000.0]
    box = Outbox(tmp_path / "o.db", budget_bytes=10**9, clock=lambda: now[0])
    transport = ScriptedTransport()
    settings = wire.WireSettings(encoding="cbor", batch_max_messages=3, batch_max_delay_s=60)
    sender = Sender(box, transport, Identity("farm1", "dev1"), 64, wire_settings=settings, clock=lambda: now[0])

    def out(kind: str) -> OutMessage:
        msg = example_messages("farm1", "dev1", fixed=False)[kind]
        return OutMessage(msg.msg_id, kind, f"cropwatch/v1/farm1/dev1/{kind}", msg.to_json())

    dets = [out("detection") for _ in range(5)]
    tele = [out("telemetry") for _ in range(2)]
    sample = out("sample")
    sender.start()
    try:
        box.add([dets[0], tele[0], dets[1], sample, dets[2], dets[3], tele[1], dets[4]])
        # Three detections fill a batch; the sample never waits; the rest wait for the delay.
        wait_for(lambda: len(transport.published) == 2, 5, what="a full batch and the sample")
        assert sender.settled() is False  # two in flight
        transport.ack_all(0)
        wait_for(sender.settled, 5, what="nothing due before the delay")
        assert len(transport.published) == 2 and box.stats()["depth"] == 4
        now[0] += 61
        sender.kick()
        wait_for(lambda: len(transport.published) == 4, 5, what="the waiting rows, one batch per kind")
        transport.ack_all(0)
        wait_for(lambda: box.stats()["depth"] == 0, 5, what="every row acknowledged")
    finally:
        sender.stop()
    assert transport.content_types == [wire.BATCH_COMPRESSED, None, wire.BATCH_COMPRESSED, wire.BATCH_COMPRESSED]
    got: dict[str, list[str]] = {}
    for (topic, payload), ctype in zip(transport.published, transport.content_types, strict=True):
        for msg in wire.decode_one(payload, ctype, topic.rsplit("/", 1)[1]):
            got.setdefault(msg.kind, []).append(msg.msg_id)  # type: ignore[attr-defined]
    assert got["detection"] == [d.msg_id for d in dets]
    assert got["telemetry"] == [t.msg_id for t in tele]
    assert got["sample"] == [sample.msg_id]
    assert box.counters()["sent"] == 8


def test_wait_idle_flushes_what_waits_for_a_batch(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", budget_bytes=10**9)
    transport = ScriptedTransport()
    settings = wire.WireSettings(encoding="cbor", batch_max_messages=50, batch_max_delay_s=3600)
    sender = Sender(box, transport, Identity("farm1", "dev1"), 64, wire_settings=settings)
    msgs = [example_messages("farm1", "dev1", fixed=False)["event"] for _ in range(2)]
    box.add([OutMessage(x.msg_id, "event", "cropwatch/v1/farm1/dev1/event", x.to_json()) for x in msgs])
    sender.start()
    try:
        threading.Timer(0.3, lambda: wait_for(lambda: transport.ack_all(0) > 0, 5, what="publish")).start()
        assert sender.wait_idle(5)
        assert box.stats()["depth"] == 0 and transport.content_types == [wire.BATCH_COMPRESSED]
    finally:
        sender.stop()


def test_no_matching_subscribers_keeps_the_row_and_sends_it_again(tmp_path: Path) -> None:
    """PUBACK 0x10: the broker dropped it (ingest not subscribed yet); found by bench/chaos.py."""
    box = Outbox(tmp_path / "o.db", budget_bytes=10**9)
    transport = ScriptedTransport()
    sender = Sender(box, transport, Identity("farm1", "dev1"), max_inflight=8)
    sender.start()
    try:
        box.add([OutMessage(f"{i:026d}", "telemetry", f"t/{i}", b"{}") for i in range(3)])
        wait_for(lambda: len(transport.published) == 3, 5, what="first sends")
        transport.ack_all(0x10)
        wait_for(lambda: len(transport.published) == 6, 10, what="the same rows sent again after the pause")
        assert box.stats()["depth"] == 3  # nothing deleted on 0x10
        assert [t for t, _ in transport.published[3:]] == ["t/0", "t/1", "t/2"]  # in order
        transport.ack_all(0)
        wait_for(lambda: box.stats()["depth"] == 0, 5, what="delivered once someone subscribed")
    finally:
        sender.stop()


def test_shutdown_does_not_wait_for_rows_nobody_subscribed_to(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", budget_bytes=10**9)
    transport = ScriptedTransport()
    sender = Sender(box, transport, Identity("farm1", "dev1"), max_inflight=8)
    sender.start()
    try:
        box.add([OutMessage(f"{i:026d}", "telemetry", f"t/{i}", b"{}") for i in range(2)])
        wait_for(lambda: len(transport.published) == 2, 5, what="first sends")
        transport.ack_all(0x10)
        wait_for(lambda: sender.inflight() == 0, 5, what="rows back in line")
        assert sender.wait_idle(5.0) is False  # at once: they stay on disk for the next start
        assert box.stats()["depth"] == 2
    finally:
        sender.stop()
