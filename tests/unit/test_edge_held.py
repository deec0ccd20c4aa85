"""Acknowledged rows held for the broker's save window, and a full disk during acknowledgements."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge_agent.held import AckHold
from edge_agent.outbox import Outbox, OutMessage
from edge_agent.pipeline import Identity
from edge_agent.sender import Sender
from tests.services import wait_for
from tests.unit.test_edge_sender import ScriptedTransport

pytestmark = pytest.mark.unit


def _msgs(n: int, start: int = 0) -> list[OutMessage]:
    return [OutMessage(f"{i:026d}", "detection", f"t/{i}", b"{}") for i in range(start, start + n)]


def test_acked_rows_are_held_then_sent_again_after_a_reconnect(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", budget_bytes=10**9)
    transport = ScriptedTransport()
    sender = Sender(box, transport, Identity("farm1", "dev1"), max_inflight=64, hold_acked_s=60)
    sender.start()
    try:
        box.add(_msgs(5))
        wait_for(lambda: len(transport.published) == 5, 5, what="5 publishes")
        transport.ack_all(0)
        wait_for(lambda: len(sender.held) == 5 and sender.inflight() == 0, 5, what="5 rows held")
        # Held rows are delivered: not backlog, not sent again while the connection lasts.
        assert box.stats()["depth"] == 0 and box.stats()["held"] == 5
        box.add(_msgs(1, start=5))
        wait_for(lambda: len(transport.published) == 6, 5, what="the new row")
        transport.ack_all(0)
        wait_for(lambda: len(sender.held) == 6, 5, what="6 rows held")
        # A broker that crashed forgot them: after the reconnect all six go again, in order.
        sender.on_connected()
        wait_for(lambda: len(transport.published) == 12, 5, what="held rows sent again")
        assert [t for t, _ in transport.published[6:]] == [f"t/{i}" for i in range(6)]
        transport.ack_all(0)
        wait_for(lambda: len(sender.held) == 6 and sender.inflight() == 0, 5, what="held again")
        assert box.counters()["resent_after_reconnect"] == 6
    finally:
        sender.stop()


def test_held_rows_are_released_after_the_window_on_the_monotonic_clock(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", budget_bytes=10**9)
    box.add(_msgs(3))
    mono = [100.0]
    hold = AckHold(box, 30, clock=lambda: mono[0])
    rows = box.next_batch(0, 10)
    hold.acked([r.id for r in rows[:2]])
    mono[0] += 20
    hold.acked([rows[2].id])
    mono[0] += 15  # the first two are 35 s old, the third 15 s
    assert hold.tend() is None
    assert box.held_ids() == [rows[2].id] and len(hold) == 1
    assert box.stats()["depth"] == 0


def test_rows_held_at_start_are_sent_at_the_first_connection(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = Outbox(path, budget_bytes=10**9)
    box.add(_msgs(2))
    AckHold(box, 60).acked([r.id for r in box.next_batch(0, 10)])
    box.close()
    box = Outbox(path, budget_bytes=10**9)  # the agent restarted within the window
    transport = ScriptedTransport()
    sender = Sender(box, transport, Identity("farm1", "dev1"), hold_acked_s=60)
    assert len(sender.held) == 2
    sender.start()
    try:
        sender.on_connected()
        wait_for(lambda: len(transport.published) == 2, 5, what="held rows sent at the first connection")
    finally:
        sender.stop()


def test_held_rows_make_room_before_the_budget_drops_anything(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", budget_bytes=4 * (96 + 20))
    box.add(_msgs(3))
    AckHold(box, 60).acked([r.id for r in box.next_batch(0, 10)])
    assert box.add(_msgs(3, start=3)) == []  # room taken from delivered rows: nothing dropped
    assert box.held_ids() == [] and box.stats()["depth"] == 3
    assert not any(k.startswith("dropped_") for k in box.counters())


def test_held_rows_do_not_expire_into_the_drop_counters(tmp_path: Path) -> None:
    now = [1000.0]
    box = Outbox(tmp_path / "o.db", budget_bytes=10**9, ttl_s={"detection": 10.0}, clock=lambda: now[0])
    box.add(_msgs(2))
    AckHold(box, 60).acked([box.next_batch(0, 10)[0].id])
    now[0] += 11
    assert box.expire() == {"detection": 1}  # only the undelivered one
    assert len(box.held_ids()) == 1


def test_an_acknowledgement_the_full_disk_refused_is_written_later_and_not_resent(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", budget_bytes=10**9)
    transport = ScriptedTransport()
    errors: list[str] = []
    sender = Sender(box, transport, Identity("farm1", "dev1"), max_inflight=64, count_error=errors.append)
    real_acked = box.acked
    full = [True]

    def acked(ids, hold=False):  # type: ignore[no-untyped-def]
        if full[0]:
            raise sqlite3.OperationalError("database or disk is full")
        real_acked(ids, hold)

    box.acked = acked  # type: ignore[method-assign]
    sender.start()
    try:
        box.add(_msgs(4))
        wait_for(lambda: len(transport.published) == 4, 5, what="4 publishes")
        transport.ack_all(0)
        # While the disk is full the rows stay in flight: not deleted, not sent a second time.
        wait_for(lambda: "sender_acks" in errors, 5, what="the failed acknowledgement write")
        assert box.stats()["depth"] == 4
        box.add(_msgs(1, start=4))
        wait_for(lambda: len(transport.published) == 5, 5, what="the new row only")
        assert sender.inflight() == 5
        full[0] = False
        sender.kick()
        transport.ack_all(0)
        wait_for(lambda: box.stats()["depth"] == 0 and sender.inflight() == 0, 10, what="acks written later")
        assert len(transport.published) == 5
    finally:
        sender.stop()


def test_rows_held_by_an_earlier_run_go_again_when_the_hold_is_turned_off(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", budget_bytes=10**9)
    box.add(_msgs(2))
    AckHold(box, 60).acked([r.id for r in box.next_batch(0, 10)])
    assert box.stats()["depth"] == 0
    AckHold(box, 0)  # the agent restarted with hold_acked_s = 0
    assert box.held_ids() == [] and box.stats()["depth"] == 2
