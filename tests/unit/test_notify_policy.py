"""Pure parts of notifications: matching, quiet hours across midnight and DST, backoff, signed links,
channel redaction, subscription validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from farm_monitor import acklink
from farm_monitor.db.notifications import SubscriptionSpec, channel_key, redact_channel
from farm_monitor.notify.channels import _scrub
from farm_monitor.notify.policy import AlertView, backoff_s, bumped, matches, quiet_until


def _alert(severity: str = "warning", rule: str = "disease", farm: str = "farm-a", field: str | None = "north"):
    now = datetime(2026, 6, 1, tzinfo=UTC)
    return AlertView(1, rule, severity, farm, field, None, "m", {}, now, None, None)


def test_matching_by_farm_field_kind_and_severity() -> None:
    spec = SubscriptionSpec(farms=["farm-a"], fields=["north"], kinds=["disease"], min_severity="warning")
    assert matches(spec, _alert(), "warning", True)
    assert not matches(spec, _alert(), "warning", False)  # the user no longer sees the farm
    assert not matches(spec, _alert(farm="farm-b"), "warning", True)
    assert not matches(spec, _alert(field="south"), "warning", True)
    assert not matches(spec, _alert(rule="device_offline"), "warning", True)
    assert not matches(spec, _alert("info"), "info", True)
    assert matches(SubscriptionSpec(min_severity="critical"), _alert(), bumped("warning"), True)
    assert bumped("critical") == "critical" and bumped("info") == "warning"
    assert not matches(SubscriptionSpec(enabled=False), _alert(), "critical", True)


def test_quiet_hours_wrap_midnight_in_the_users_zone_and_critical_overrides() -> None:
    spec = SubscriptionSpec(timezone="America/Chicago", quiet_start="21:30", quiet_end="06:00")
    evening = datetime(2026, 7, 1, 3, 0, tzinfo=UTC)  # 22:00 in Chicago (CDT, UTC-5)
    assert quiet_until(spec, evening, "warning") == datetime(2026, 7, 1, 11, 0, tzinfo=UTC)
    assert quiet_until(spec, evening, "critical") is None
    strict = spec.model_copy(update={"critical_overrides_quiet": False})
    assert quiet_until(strict, evening, "critical") is not None
    assert quiet_until(spec, datetime(2026, 7, 1, 12, 0, tzinfo=UTC), "info") is None  # 07:00 local
    after_midnight = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)  # 03:00 local
    assert quiet_until(spec, after_midnight, "info") == datetime(2026, 7, 1, 11, 0, tzinfo=UTC)


def test_quiet_hours_end_at_the_local_time_across_a_dst_change() -> None:
    spec = SubscriptionSpec(timezone="Europe/Berlin", quiet_start="22:00", quiet_end="07:00")
    # The night of 28 to 29 March 2026: Berlin goes from UTC+1 to UTC+2 at 02:00.
    night = datetime(2026, 3, 28, 22, 0, tzinfo=UTC)  # 23:00 CET
    assert quiet_until(spec, night, "warning") == datetime(2026, 3, 29, 5, 0, tzinfo=UTC)  # 07:00 CEST


def test_backoff_doubles_and_caps() -> None:
    assert [backoff_s(n, 30, 200) for n in (1, 2, 3, 4, 5)] == [30, 60, 120, 200, 200]


def test_ack_link_signed_expiring_and_bound_to_its_secret() -> None:
    now = datetime(2026, 6, 1, tzinfo=UTC)
    claim = acklink.AckClaim(7, "agro", 42, now + timedelta(hours=1))
    token = acklink.sign("s" * 32, claim)
    assert acklink.verify("s" * 32, token, now) == claim
    for bad, reason in [
        (token, "bad_signature"),  # another monitor's secret
        (token.replace(".", ""), "malformed"),
    ]:
        with pytest.raises(acklink.AckLinkError) as err:
            acklink.verify("t" * 32, bad, now)
        assert err.value.reason == reason
    forged = acklink.sign("s" * 32, acklink.AckClaim(8, "agro", 42, now + timedelta(hours=1)))
    with pytest.raises(acklink.AckLinkError, match="altered"):
        acklink.verify("s" * 32, forged.split(".")[0] + "." + token.split(".")[1], now)  # alert id swapped
    with pytest.raises(acklink.AckLinkError) as err:
        acklink.verify("s" * 32, token, now + timedelta(hours=1))
    assert err.value.reason == "expired"


def test_channels_are_shown_redacted_and_validated() -> None:
    url = "tgram://123456:ABCdefSECRET/987654"
    shown = redact_channel(url)
    assert shown.startswith("tgram://") and "SECRET" not in shown and "987654" not in shown
    assert redact_channel("secret:telegram-alice") == "secret:telegram-alice"
    assert channel_key(url) == channel_key(f" {url} ") and len(channel_key(url)) == 16
    assert "ABCdefSECRET" not in _scrub(f"failed to reach {url} token ABCdefSECRET", url)
    with pytest.raises(ValidationError, match="Apprise URL"):
        SubscriptionSpec(channels=["not a url with a token 123"])
    with pytest.raises(ValidationError, match="time zone"):
        SubscriptionSpec(timezone="Mars/Olympus")
    with pytest.raises(ValidationError, match="HH:MM"):
        SubscriptionSpec(quiet_start="25:00")
    with pytest.raises(ValidationError, match="secret:NAME"):
        SubscriptionSpec(channels=["secret:../etc/passwd"])
