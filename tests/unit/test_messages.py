from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings, strategies as st

from shared import messages as m
from shared.examples import example_messages, tiny_jpeg
from shared.ids import msg_id_time, new_msg_id

KINDS = list(m.MESSAGE_TYPES)


def parse_any(kind: str, payload: bytes) -> m.Envelope:
    if kind in m.DEVICE_KINDS:
        return m.parse_device_message(payload, expected_kind=kind)
    if kind == "desired_model":
        return m.parse_desired_model(payload)
    return m.parse_command(payload, expected_command=kind)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_round_trips_through_json(kind: str) -> None:
    msg = example_messages(fixed=False)[kind]
    again = parse_any(kind, msg.to_json())
    assert again == msg
    assert again.schema_version == 1
    assert again.observed_at.tzinfo is not None and again.observed_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_fields_are_rejected(kind: str) -> None:
    doc = json.loads(example_messages(fixed=False)[kind].to_json())
    doc["surprise"] = 1
    with pytest.raises(m.MessageError) as err:
        parse_any(kind, json.dumps(doc).encode())
    assert err.value.reason == "schema"
    assert "surprise" in str(err.value)


@pytest.mark.parametrize("field", ["msg_id", "observed_at", "schema_version", "farm_id", "device_id"])
def test_envelope_fields_are_required_on_the_wire(field: str) -> None:
    doc = json.loads(example_messages(fixed=False)["detection"].to_json())
    del doc[field]
    with pytest.raises(m.MessageError):
        m.parse_device_message(json.dumps(doc))


@pytest.mark.parametrize("bad", ["", "Farm", "a/b", "+", "#", "a b", "-lead", "x" * 65, "_fleet"])
def test_id_pattern_is_enforced(bad: str) -> None:
    doc = json.loads(example_messages(fixed=False)["telemetry"].to_json())
    doc["device_id"] = bad
    with pytest.raises(m.MessageError) as err:
        m.parse_device_message(json.dumps(doc))
    assert "device_id" in str(err.value)


def test_naive_times_are_rejected_and_zones_become_utc() -> None:
    base = example_messages(fixed=False)["event"]
    doc = json.loads(base.to_json())
    doc["observed_at"] = "2026-06-14T09:30:00"
    with pytest.raises(m.MessageError):
        m.parse_device_message(json.dumps(doc))
    doc["observed_at"] = "2026-06-14T11:30:00+02:00"
    parsed = m.parse_device_message(json.dumps(doc))
    assert parsed.observed_at == datetime(2026, 6, 14, 9, 30, tzinfo=timezone.utc)  # noqa: UP017
    assert parsed.to_json().decode().count("09:30:00Z") == 1


def test_sample_image_limit_is_256_kib() -> None:
    ok = example_messages(fixed=False)["sample"]
    doc = json.loads(ok.to_json())
    big = b"\xff\xd8\xff" + b"\0" * (m.MAX_SAMPLE_IMAGE_BYTES - 3)
    doc["image_jpeg"] = base64.b64encode(big).decode()
    assert m.parse_device_message(json.dumps(doc)).image_jpeg == big
    doc["image_jpeg"] = base64.b64encode(big + b"\0").decode()
    with pytest.raises(m.MessageError, match="256 KiB"):
        m.parse_device_message(json.dumps(doc))


def test_sample_must_hold_a_jpeg() -> None:
    doc = json.loads(example_messages(fixed=False)["sample"].to_json())
    doc["image_jpeg"] = base64.b64encode(b"\x89PNG\r\n\x1a\n....").decode()
    with pytest.raises(m.MessageError, match="JPEG"):
        m.parse_device_message(json.dumps(doc))


def test_sample_built_in_code_takes_raw_bytes() -> None:
    jpeg = tiny_jpeg()
    s = m.Sample(farm_id="f", device_id="d", reason="requested", width=32, height=24, image_jpeg=jpeg)
    assert s.image_jpeg == jpeg
    assert json.loads(s.to_json())["image_jpeg"] == base64.b64encode(jpeg).decode()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "invalid_json"),
        (b"\xff\xfe\x00", "invalid_json"),
        (b"[1, 2]", "schema"),
        (b'{"schema_version": 2, "kind": "detection"}', "unknown_schema_version"),
        (b'{"schema_version": 1, "kind": "harvest"}', "unknown_kind"),
        (b'{"schema_version": 1, "kind": "telemetry", "x": NaN}', "non_finite"),
        (b'{"schema_version": 1, "kind": "telemetry", "x": Infinity}', "non_finite"),
        (b"[" * 250_000 + b"]" * 250_000, "too_large"),
        (b"[" * 50_000 + b"]" * 50_000, "too_deep"),
    ],
    ids=["truncated", "not-utf8", "array", "v2", "unknown-kind", "nan", "inf", "oversized", "deep"],
)
def test_bad_payloads_get_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(m.MessageError) as err:
        m.parse_device_message(payload)
    assert err.value.reason == reason


def test_kind_must_match_the_topic() -> None:
    payload = example_messages(fixed=False)["event"].to_json()
    with pytest.raises(m.MessageError) as err:
        m.parse_device_message(payload, expected_kind="detection")
    assert err.value.reason == "kind_mismatch"


def test_top_k_must_be_sorted_and_probabilities_bounded() -> None:
    doc = json.loads(example_messages(fixed=False)["detection"].to_json())
    doc["top_k"] = list(reversed(doc["top_k"]))
    with pytest.raises(m.MessageError, match="sorted"):
        m.parse_device_message(json.dumps(doc))
    doc["top_k"] = [{"label": "a", "probability": 1.5}]
    with pytest.raises(m.MessageError):
        m.parse_device_message(json.dumps(doc))


def test_quantiles_must_be_ordered() -> None:
    doc = json.loads(example_messages(fixed=False)["yield"].to_json())
    doc["quantiles"] = {"p10": 9.0, "p50": 8.0, "p90": 10.0}
    with pytest.raises(m.MessageError, match="p10 <= p50 <= p90"):
        m.parse_device_message(json.dumps(doc))


def test_unknown_command_is_named() -> None:
    doc = json.loads(example_messages(fixed=False)["ping"].to_json())
    doc["command"] = "self_destruct"
    with pytest.raises(m.MessageError) as err:
        m.parse_command(json.dumps(doc))
    assert err.value.reason == "unknown_command"
    assert "self_destruct" in str(err.value)


def test_desired_model_must_agree_with_its_manifest() -> None:
    dm = example_messages(fixed=False)["desired_model"]
    doc = json.loads(dm.to_json())
    doc["artifacts"][0]["sha256"] = "0" * 64
    with pytest.raises(m.MessageError, match="disagrees"):
        m.parse_desired_model(json.dumps(doc))
    doc = json.loads(dm.to_json())
    doc["version"] = "9.9.9"
    with pytest.raises(m.MessageError, match="match the manifest"):
        m.parse_desired_model(json.dumps(doc))


def test_msg_ids_are_unique_and_time_ordered() -> None:
    ids = [new_msg_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert abs((msg_id_time(ids[0]) - datetime.now(timezone.utc)).total_seconds()) < 60  # noqa: UP017


def test_msg_id_carries_the_given_time() -> None:
    ms = 1_780_000_000_123
    assert msg_id_time(new_msg_id(now_ms=ms)).timestamp() * 1000 == pytest.approx(ms, abs=1)


def test_json_schema_for_every_kind() -> None:
    schemas = m.json_schemas()
    assert set(schemas) == set(m.MESSAGE_TYPES)
    for kind, schema in schemas.items():
        assert schema["type"] == "object"
        assert schema.get("additionalProperties") is False, kind
        for field in ("schema_version", "msg_id", "farm_id", "device_id", "observed_at"):
            assert field in schema["required"], (kind, field)


# --- property tests: nothing but MessageError ever escapes -------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_raise_only_message_error(payload: bytes) -> None:
    with pytest.raises(m.MessageError):
        m.parse_device_message(payload)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_random_json_raises_only_message_error(doc: object) -> None:
    try:
        payload = json.dumps(doc).encode()
    except ValueError:
        return
    with pytest.raises(m.MessageError):
        m.parse_device_message(payload)
    with pytest.raises(m.MessageError):
        m.parse_command(payload)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_mutated_valid_messages_parse_or_raise_message_error(kind: str, data: st.DataObject) -> None:
    doc = json.loads(example_messages(fixed=False)[kind].to_json())
    key = data.draw(st.sampled_from(sorted(doc)))
    doc[key] = data.draw(json_values)
    payload = json.dumps(doc).encode()
    try:
        parsed = parse_any(kind, payload)
    except m.MessageError:
        return
    # Whatever was accepted must serialise back to something that parses to the same message.
    assert parse_any(kind, parsed.to_json()) == parsed
