from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from shared import topics as t
from shared.errors import TopicError
from shared.messages import COMMANDS, DEVICE_KINDS

ids = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True)


@settings(max_examples=200)
@given(farm=ids, device=ids, kind=st.sampled_from(DEVICE_KINDS))
def test_device_topics_round_trip(farm: str, device: str, kind: str) -> None:
    topic = t.device_topic(farm, device, kind)
    parsed = t.parse_topic(topic)
    assert (parsed.category, parsed.farm_id, parsed.device_id, parsed.kind) == ("device", farm, device, kind)
    assert str(parsed) == topic


@settings(max_examples=100)
@given(farm=ids, device=ids, command=st.sampled_from(COMMANDS))
def test_command_topics_round_trip(farm: str, device: str, command: str) -> None:
    topic = t.command_topic(farm, device, command)
    parsed = t.parse_topic(topic)
    assert (parsed.category, parsed.device_id, parsed.command) == ("command", device, command)
    assert str(parsed) == topic


@settings(max_examples=100)
@given(farm=ids, name=ids)
def test_fleet_topics_round_trip(farm: str, name: str) -> None:
    topic = t.fleet_model_topic(farm, name)
    assert topic == f"cropwatch/v1/{farm}/_fleet/model/{name}"
    parsed = t.parse_topic(topic)
    assert (parsed.category, parsed.farm_id, parsed.model_name) == ("fleet_model", farm, name)
    assert str(parsed) == topic
    shadow = t.fleet_shadow_topic(farm, name)
    assert shadow == f"cropwatch/v1/{farm}/_fleet/shadow/{name}"
    parsed = t.parse_topic(shadow)
    assert (parsed.category, parsed.farm_id, parsed.model_name) == ("fleet_shadow", farm, name)
    assert str(parsed) == shadow


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("cropwatch/v1/+/gw-1/status", "wildcard"),
        ("cropwatch/v1/farm/#", "wildcard"),
        ("cropwatch/v1/farm//status", "empty_segment"),
        ("cropwatch/v1/farm/gw-1/status/", "empty_segment"),
        ("/cropwatch/v1/farm/gw-1/status", "empty_segment"),
        ("cropwatch/v2/farm/gw-1/status", "wrong_version"),
        ("cropwatch", "wrong_version"),
        ("agriwatch/v1/farm/gw-1/status", "wrong_prefix"),
        ("cropwatch/v1/farm/gw-1/harvest", "unknown_kind"),
        ("cropwatch/v1/farm/gw-1/cmd/reboot", "unknown_command"),
        ("cropwatch/v1/Farm/gw-1/status", "bad_id"),
        ("cropwatch/v1/farm/gw 1/status", "bad_id"),
        ("cropwatch/v1/farm/gw-1", "wrong_length"),
        ("cropwatch/v1/farm/gw-1/status/extra/more", "wrong_length"),
        ("cropwatch/v1/farm/_fleet/model", "wrong_length"),
        ("cropwatch/v1/farm/_fleet/canary/leaf", "wrong_length"),
    ],
)
def test_bad_topics_say_what_is_wrong(topic: str, reason: str) -> None:
    with pytest.raises(TopicError) as err:
        t.parse_topic(topic)
    assert err.value.reason == reason


def test_building_rejects_bad_ids() -> None:
    with pytest.raises(TopicError, match="device_id"):
        t.device_topic("farm", "a/b", "status")
    with pytest.raises(TopicError, match="unknown"):
        t.device_topic("farm", "gw", "nope")


def test_filters_and_shared_subscriptions() -> None:
    assert t.device_filter() == "cropwatch/v1/+/+/+"
    assert t.device_filter("farm-a", kind="detection") == "cropwatch/v1/farm-a/+/detection"
    assert t.shared_subscription("ingest", t.device_filter()) == "$share/ingest/cropwatch/v1/+/+/+"
    with pytest.raises(TopicError):
        t.device_filter("bad/farm")


@settings(max_examples=500)
@given(st.text(max_size=120))
def test_random_topics_raise_only_topic_error(topic: str) -> None:
    try:
        parsed = t.parse_topic(topic)
    except TopicError:
        return
    assert str(parsed) == topic


@settings(max_examples=300)
@given(
    st.lists(
        st.sampled_from(["cropwatch", "v1", "farm", "gw-1", "", "+", "#", "cmd", "_fleet", "model", "status", "x"]),
        max_size=7,
    )
)
def test_random_segment_mixes_raise_only_topic_error(segments: list[str]) -> None:
    topic = "/".join(segments)
    try:
        parsed = t.parse_topic(topic)
    except TopicError:
        return
    assert str(parsed) == topic
