"""The uplink's parts one at a time: windows, value tiers, the day's allowance, aggregation, status, power."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge_agent.outbox import Outbox
from edge_agent.uplink.aggregate import TelemetryAggregator
from edge_agent.uplink.budget import LABEL, MUST, ROUTINE, USEFUL, Allowance, day_allowance, decide, value_of
from edge_agent.uplink.gate import UplinkGate
from edge_agent.uplink.power import PowerGovernor
from edge_agent.uplink.settings import PowerSettings, UplinkSettings
from edge_agent.uplink.status import StatusPolicy
from edge_agent.uplink.windows import LinkSchedule, day_and_month, parse_schedule
from shared.messages import Health, Status, Telemetry


def ts(h: int, m: int = 0, day: int = 10) -> float:
    return datetime(2026, 6, day, h, m, tzinfo=UTC).timestamp()


def test_schedule_opens_in_its_windows_and_names_the_next_one() -> None:
    s = LinkSchedule("06:00-06:15,23:50-00:10")
    assert not s.is_open(ts(5, 59)) and s.is_open(ts(6, 0)) and s.is_open(ts(6, 14)) and not s.is_open(ts(6, 15))
    assert s.is_open(ts(23, 55)) and s.is_open(ts(0, 5, day=11))  # past midnight
    assert s.next_open(ts(5, 0)) == ts(6, 0)
    assert s.next_open(ts(6, 5)) == ts(23, 50)  # the one after the window it is in
    local = LinkSchedule("06:00-06:15", tz="Europe/Paris")  # UTC+2 in June
    assert local.is_open(ts(4, 5)) and not local.is_open(ts(6, 5))


@pytest.mark.parametrize("bad", ["6-7", "06:00-06:00", "25:00-26:00", "06:00-06:15,", "06:61-07:00"])
def test_a_bad_schedule_says_what_is_wrong(bad: str) -> None:
    with pytest.raises(ValueError, match="uplink window"):
        parse_schedule(bad)


def test_power_reading_opens_the_link_outside_the_windows() -> None:
    volts: list[float | None] = [None]
    s = LinkSchedule("06:00-06:15", power_above=12.6, power=lambda: volts[0])
    assert not s.is_open(ts(12))
    volts[0] = 12.9
    assert s.is_open(ts(12))


def test_value_tiers_follow_the_farmers_priorities() -> None:
    assert value_of("detection", b"{}") == MUST and value_of("status", b"{}") == MUST
    assert value_of("event", b'{"level":"error"}') == MUST
    assert value_of("event", b'{"level":"info"}') == USEFUL and value_of("telemetry", b"{}") == USEFUL
    assert value_of("sample", b'{"reason":"low_confidence"}') == LABEL
    assert value_of("sample", b'{"reason":"random"}') == ROUTINE
    assert value_of("event", b'{"level":"debug"}') == ROUTINE


def test_the_day_allowance_spreads_the_unspent_month() -> None:
    assert day_allowance(3_000_000, None, 0, 30) == 100_000
    assert day_allowance(3_000_000, None, 2_000_000, 10) == 100_000
    assert day_allowance(3_000_000, 50_000, 0, 30) == 50_000
    assert day_allowance(3_000_000, None, 4_000_000, 3) == 0  # over budget: must-go only
    assert day_and_month(ts(12, day=30), LinkSchedule(None).tz) == ("2026-06-30", "2026-06", 1)


def test_decisions_keep_a_reserve_for_must_go_messages() -> None:
    a = Allowance(10_000, 7_000)
    assert decide(MUST, "detection", 5_000, 0, a, 3600).action == "send"
    assert decide(USEFUL, "telemetry", 3_000, 0, a, 3600).action == "send"
    assert decide(USEFUL, "telemetry", 3_001, 0, a, 3600).action == "hold"
    assert decide(USEFUL, "telemetry", 3_001, 7200, a, 3600).action == "drop"  # waited past hold_s
    shrink = decide(LABEL, "sample", 15_000, 0, Allowance(10_000, 0), 3600)
    assert shrink.action == "shrink" and shrink.max_bytes == 8_500
    assert decide(ROUTINE, "sample", 20_000, 0, a, 3600).action == "drop"
    # Paced: at noon samples may have used about half the day's share; telemetry is not paced.
    noon = Allowance(10_000, 0, pace=0.5)
    assert noon.room(LABEL) == 4_250 and noon.room(ROUTINE) == 3_000 and noon.room(USEFUL) == 10_000


def _raw(at: datetime, value: float, flags: list[dict[str, object]] | None = None) -> Telemetry:
    return Telemetry(
        farm_id="f", device_id="d", observed_at=at,
        readings=[{"sensor": "s1", "quantity": "soil_moisture", "value": value, "unit": "%"}],
        sensor_health=flags or [],
    )  # fmt: skip


def test_telemetry_folds_per_hour_and_a_health_change_ends_the_interval_early() -> None:
    agg = TelemetryAggregator(3600)
    t0 = datetime(2026, 6, 10, 8, 0, tzinfo=UTC)
    out = []
    for i, v in enumerate([30.0, 32.0, 28.0, 31.0]):
        out += agg.add(_raw(t0 + timedelta(minutes=15 * i), v))
    assert out == []
    out = agg.add(_raw(t0 + timedelta(hours=1), 29.0))  # the next hour begins
    assert len(out) == 1
    r = out[0].readings[0]
    assert (r.value, r.min, r.max, r.count) == (31.0, 28.0, 32.0, 4) and r.mean == pytest.approx(30.25)
    assert out[0].interval_s == 2700.0
    flag = {"sensor": "s1", "quantity": "soil_moisture", "state": "stuck", "since": t0}
    early = agg.add(_raw(t0 + timedelta(hours=1, minutes=5), 29.0, [flag]))
    assert len(early) == 1 and early[0].sensor_health[0].state == "stuck" and early[0].readings[0].count == 2


STARTED = datetime(2026, 6, 10, 7, 0, tzinfo=UTC)


def _status(health: Health, state: str = "online") -> Status:
    return Status(farm_id="f", device_id="d", state=state, since=STARTED, agent_version="1.0.0", health=health)


def test_metered_status_goes_on_change_and_on_keepalive_only() -> None:
    clock = [ts(8)]
    policy = StatusPolicy(
        UplinkSettings(metered=True, status_keepalive_s=3600), LinkSchedule(None), 60, lambda: clock[0]
    )
    assert policy.due(_status(Health(uptime_s=1, cpu_percent=3)))
    clock[0] += 60
    assert not policy.due(_status(Health(uptime_s=61, cpu_percent=1)))  # only volatile figures changed
    clock[0] += 60
    assert policy.due(_status(Health(uptime_s=91, errors={"sensor_read": 1})))  # a new kind of error
    clock[0] += 60
    assert not policy.due(_status(Health(uptime_s=91, errors={"sensor_read": 5})))  # more of the same
    clock[0] += 60
    assert policy.due(_status(Health(uptime_s=121, outbox_refused=2, errors={"sensor_read": 5})))  # news
    clock[0] += 1800
    assert not policy.due(_status(Health(uptime_s=1921, outbox_refused=2, errors={"sensor_read": 5})))
    clock[0] += 1800
    assert policy.due(_status(Health(uptime_s=3721, outbox_refused=2, errors={"sensor_read": 5})))  # keep-alive
    assert policy.next_contact(clock[0]) == clock[0] + 3600 + 60
    unmetered = StatusPolicy(UplinkSettings(), LinkSchedule(None), 60, lambda: clock[0])
    assert unmetered.due(_status(Health(uptime_s=1))) and unmetered.due(_status(Health(uptime_s=1)))
    assert unmetered.next_contact() is None


def test_power_governor_stretches_captures_on_a_low_battery() -> None:
    volts = [12.8]
    gov = PowerGovernor(PowerSettings(low=12.2, critical=11.8, low_duty=0.25), lambda q, since: volts[0])
    assert all(gov.allow("cam") for _ in range(4))
    volts[0] = 12.0
    assert [gov.allow("cam") for _ in range(8)] == [False, False, False, True] * 2
    volts[0] = 11.5
    assert not any(gov.allow("cam") for _ in range(4))
    no_sensor = PowerGovernor(PowerSettings(low=12.2), lambda q, since: None)
    assert no_sensor.allow("cam")


def test_an_outbox_from_before_the_budget_opens_and_its_rows_count_as_must_go(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "o.db")
    db.execute(
        "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, msg_id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL, "
        "topic TEXT NOT NULL, payload BLOB NOT NULL, priority INTEGER NOT NULL, created REAL NOT NULL, "
        "state TEXT NOT NULL DEFAULT 'pending', reason_code INTEGER, attempts INTEGER NOT NULL DEFAULT 0)"
    )
    db.execute(
        "INSERT INTO outbox (msg_id, kind, topic, payload, priority, created) VALUES ('m1', 'sample', 't', ?, 1, 0)",
        (b'{"reason":"random"}',),
    )
    db.commit()
    db.close()
    settings = UplinkSettings(metered=True, budget_mb_day=0.00001)  # 10 bytes a day: only must-go fits
    box = Outbox(tmp_path / "o.db", 10**6, clock=lambda: ts(23), gate=UplinkGate(settings, LinkSchedule(None)))
    rows = box.sendable(0, 10, set())
    assert [r.msg_id for r in rows] == ["m1"]
    assert box.uplink_usage()["bytes_today"] == len(b'{"reason":"random"}') + 1
    box.close()
