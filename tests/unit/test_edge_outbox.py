"""The outbox on a real SQLite file: budget policy, TTL, order, refusals, durability across reopen."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge_agent.outbox import ROW_OVERHEAD, Outbox, OutMessage


def msg(i: int, kind: str, size: int = 100) -> OutMessage:
    return OutMessage(msg_id=f"{i:026d}", kind=kind, topic=f"t/{kind}", payload=b"x" * size)


def row_cost(kind: str, size: int = 100) -> int:
    return size + len(f"t/{kind}") + ROW_OVERHEAD


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_budget_drops_lowest_priority_oldest_first_and_never_events(tmp_path: Path) -> None:
    budget = 4 * row_cost("detection")
    box = Outbox(tmp_path / "o.db", budget_bytes=budget)
    box.add([msg(1, "telemetry"), msg(2, "sample"), msg(3, "telemetry"), msg(4, "detection")])
    # Full: a new detection displaces the oldest telemetry first, then the next telemetry.
    assert box.add([msg(5, "detection")]) == [f"{1:026d}"]
    assert box.add([msg(6, "detection")]) == [f"{3:026d}"]
    # Then the sample, and only then the oldest detection.
    assert box.add([msg(7, "detection")]) == [f"{2:026d}"]
    assert box.add([msg(8, "detection")]) == [f"{4:026d}"]
    # Telemetry never displaces a detection: the new telemetry itself is dropped.
    assert box.add([msg(9, "telemetry")]) == [f"{9:026d}"]
    # Events are never dropped: they are stored even over budget...
    for i in range(10, 20):
        assert box.add([msg(i, "event")]) == []
    # ...and then everything of lower priority goes before anything else is stored.
    assert box.add([msg(20, "detection")]) == [f"{i:026d}" for i in (5, 6, 7, 8, 20)]
    kinds = [r.kind for r in box.next_batch(0, 100)]
    assert kinds == ["event"] * 10
    counters = box.counters()
    assert counters["dropped_telemetry"] == 3
    assert counters["dropped_sample"] == 1
    assert counters["dropped_detection"] == 1 + 4 + 1


def test_rows_replay_in_insertion_order_and_survive_reopen(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", budget_bytes=10**9)
    box.add([msg(i, "detection" if i % 2 else "telemetry") for i in range(50)])
    first = box.next_batch(0, 10)
    box.acked([r.id for r in first])
    box.close()
    reopened = Outbox(tmp_path / "o.db", budget_bytes=10**9)
    rest = reopened.next_batch(0, 1000)
    assert [r.msg_id for r in rest] == [f"{i:026d}" for i in range(10, 50)]
    assert reopened.stats()["depth"] == 40
    assert reopened.counters()["sent"] == 10


def test_refused_rows_stay_marked_counted_and_requeue(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", budget_bytes=10**9)
    box.add([msg(1, "detection"), msg(2, "detection")])
    rows = box.next_batch(0, 10)
    box.refused(rows[0].id, 135)
    assert [r.msg_id for r in box.next_batch(0, 10)] == [f"{2:026d}"]
    assert box.refused_rows() == [(f"{1:026d}", "detection", 135)]
    assert box.stats()["refused"] == 1 and box.counters()["refused"] == 1
    assert box.requeue_refused() == 1
    assert [r.msg_id for r in box.next_batch(0, 10)] == [f"{1:026d}", f"{2:026d}"]


def test_ttl_expires_old_rows_per_kind_but_never_events(tmp_path: Path) -> None:
    clock = Clock()
    box = Outbox(tmp_path / "o.db", budget_bytes=10**9, ttl_s={"telemetry": 60, "detection": 3600}, clock=clock)
    box.add([msg(1, "telemetry"), msg(2, "detection"), msg(3, "event")])
    clock.now += 120
    box.add([msg(4, "telemetry")])
    assert box.expire() == {"telemetry": 1}
    clock.now += 7200
    assert box.expire() == {"telemetry": 1, "detection": 1}
    assert [r.kind for r in box.next_batch(0, 10)] == ["event"]
    assert box.counters()["expired_telemetry"] == 2


def test_seen_files_sample_log_and_readings_share_the_transaction(tmp_path: Path) -> None:
    clock = Clock()
    box = Outbox(tmp_path / "o.db", budget_bytes=10**9, clock=clock)
    box.add([msg(1, "detection")], seen=[("drop", "a.jpg:1:2")], readings=[(5.0, "air_temperature", 20.5)],
            sample_at=[clock.now])  # fmt: skip
    assert box.is_seen("drop", "a.jpg:1:2") and not box.is_seen("drop", "b.jpg:1:2")
    assert box.samples_since(clock.now - 10) == 1
    assert box.readings("air_temperature", 0) == [(5.0, 20.5)]


def test_state_is_pruned_but_seen_files_are_kept(tmp_path: Path) -> None:
    clock = Clock()
    box = Outbox(tmp_path / "o.db", budget_bytes=10**9, clock=clock)
    box.add([], seen=[("drop", "a")], readings=[(clock.now, "rainfall", 1.0)], sample_at=[clock.now])
    clock.now += 500 * 86400
    box.prune_state()
    assert box.samples_since(0) == 0 and box.readings("rainfall", 0) == []
    assert box.is_seen("drop", "a")  # a kept file must never be processed again


def test_ledger_lines_for_created_acked_budget_drops_and_expiry(tmp_path: Path) -> None:
    from edge_agent.ledger import Ledger

    clock = Clock()
    ledger_path = tmp_path / "ledger.txt"
    box = Outbox(tmp_path / "o.db", budget_bytes=2 * row_cost("telemetry"), ttl_s={"telemetry": 60.0},
                 clock=clock, ledger=Ledger(ledger_path))  # fmt: skip
    box.add([msg(1, "telemetry"), msg(2, "telemetry")])
    box.add([msg(3, "telemetry")])  # over budget: row 1 goes
    row = box.next_batch(0, 1)[0]
    box.acked([row.id])
    clock.now += 120
    box.expire()
    box.close()
    lines = ledger_path.read_text().splitlines()
    assert lines[:3] == [f"created {1:026d} telemetry", f"created {2:026d} telemetry", f"created {3:026d} telemetry"]
    assert f"dropped {1:026d} telemetry budget" in lines
    acked = [x for x in lines if x.startswith("acked")]
    assert len(acked) == 1 and acked[0].startswith(f"acked {2:026d} telemetry ")  # with the real time
    assert [x for x in lines if x.endswith("expired")] == [f"dropped {3:026d} telemetry expired"]


def test_full_disk_drops_are_counted_not_raised(tmp_path: Path) -> None:
    """SQLITE_FULL used to end in the pipeline as an uncounted loss (found by bench/chaos.py)."""
    from edge_agent.ledger import Ledger

    box = Outbox(tmp_path / "o.db", budget_bytes=10**9, ledger=Ledger(tmp_path / "ledger.txt"))
    pages = box._db.execute("PRAGMA page_count").fetchone()[0]
    box._db.execute(f"PRAGMA max_page_count = {pages}")  # the file cannot grow: SQLite says the disk is full
    dropped = box.add([msg(i, "detection", size=3000) for i in range(1, 4)])
    assert dropped == [f"{i:026d}" for i in range(1, 4)]
    assert box.counters()["dropped_disk_full_detection"] == 3
    assert "dropped 00000000000000000000000001 detection disk_full" in (tmp_path / "ledger.txt").read_text()
    # A write that marks folder files as done fails instead: the files stay to be read again.
    with pytest.raises(sqlite3.OperationalError, match="full"):
        box.add([msg(9, "detection", size=9000)], seen=[("trap", "a.jpg")])
    assert not box.is_seen("trap", "a.jpg")
    box._db.execute("PRAGMA max_page_count = 1073741823")
    assert box.add([msg(5, "detection")]) == [] and box.stats()["depth"] == 1
