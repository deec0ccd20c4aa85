"""When a farm report is due and for which period; which address an Apprise email channel names."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from farm_monitor.report.deliver import due_period, email_of


def test_daily_report_waits_for_the_morning_then_covers_yesterday() -> None:
    early = due_period("daily", "UTC", datetime(2026, 12, 3, 5, 59, tzinfo=UTC))
    late = due_period("daily", "UTC", datetime(2026, 12, 3, 6, 0, tzinfo=UTC))
    assert (early.key, early.start, early.end) == (
        "2026-12-01", datetime(2026, 12, 1, tzinfo=UTC), datetime(2026, 12, 2, tzinfo=UTC))  # fmt: skip
    assert late.key == "2026-12-02" and late.end - late.start == timedelta(days=1)


def test_weekly_report_is_the_last_iso_week_in_the_subscribers_zone() -> None:
    # Monday 7 Dec 2026 07:00 in Berlin is 06:00 UTC: the week of 30 Nov is due.
    p = due_period("weekly", "Europe/Berlin", datetime(2026, 12, 7, 6, 0, tzinfo=UTC))
    assert p.key == "2026-W49"
    assert p.start == datetime(2026, 11, 29, 23, 0, tzinfo=UTC) and p.end == datetime(2026, 12, 6, 23, 0, tzinfo=UTC)
    # Before 06:00 local on Monday, the week before is still the due one.
    assert due_period("weekly", "Europe/Berlin", datetime(2026, 12, 7, 4, 0, tzinfo=UTC)).key == "2026-W48"


def test_a_day_with_a_clock_change_is_23_hours_long() -> None:
    p = due_period("daily", "Europe/Berlin", datetime(2026, 3, 30, 12, 0, tzinfo=UTC))
    assert p.key == "2026-03-29" and p.end - p.start == timedelta(hours=23)


@pytest.mark.parametrize(
    ("channel", "address"),
    [
        ("mailto:alice@farm.example", "alice@farm.example"),
        ("mailto://bot:secret@smtp.example?to=alice@farm.example", "alice@farm.example"),
        ("mailtos://bot:secret@smtp.example/alice@farm.example", "alice@farm.example"),
        ("mailto://alice@farm.example", "alice@farm.example"),
        ("ntfy://farm-alerts", None),
        ("secret:mail-alice", None),
    ],
)
def test_email_address_of_a_channel(channel: str, address: str | None) -> None:
    assert email_of(channel) == address
