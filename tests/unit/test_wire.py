"""The compact wire encoding: CBOR and zstd batches carry the same messages, validated the same way."""

from __future__ import annotations

import base64
import json

import cbor2
import pytest
import zstandard
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from farm_monitor.ingest.transport import _content_type, _varint
from shared import messages as m, wire
from shared.examples import example_messages

CBOR = wire.WireSettings(encoding="cbor", compress=False)
ZSTD = wire.WireSettings(encoding="cbor")
BATCH = wire.WireSettings(encoding="cbor", batch_max_messages=20)  # compressed: the default
PLAIN_BATCH = wire.WireSettings(encoding="cbor", batch_max_messages=20, compress=False)


def fresh(kind: str) -> m.Envelope:
    return example_messages(fixed=False)[kind]


@pytest.mark.parametrize("kind", m.DEVICE_KINDS)
def test_every_kind_round_trips_through_cbor_and_is_smaller(kind: str) -> None:
    msg = fresh(kind)
    payload, ctype = wire.encode(msg, CBOR)
    assert ctype == wire.CBOR and wire.payload_format(ctype) == 0
    assert wire.decode_one(payload, ctype, kind) == [msg]
    assert len(payload) < len(msg.to_json())
    # The CBOR document is the JSON document with the image as bytes: it converts back losslessly.
    assert wire.to_json_document(cbor2.loads(payload)) == json.loads(msg.to_json())
    assert wire.transcode(msg.to_json(), CBOR) == (payload, wire.CBOR)
    assert wire.encoded_size(msg, CBOR, "a/b") == len(payload) + 3 == wire.encoded_size(msg.to_json(), CBOR, "a/b")


@pytest.mark.parametrize("kind", m.DEVICE_KINDS)
def test_a_lone_message_compresses_with_the_shipped_dictionary(kind: str) -> None:
    msg = fresh(kind)
    payload, ctype = wire.encode(msg, ZSTD)
    assert ctype == wire.COMPRESSED == "application/vnd.cropwatch.cbor+zstd; dict=1"
    assert wire.decode_one(payload, ctype, kind) == [msg]
    if kind != "sample":  # a JPEG does not compress
        # The dictionary was trained on field devices' kinds; a gateway's two kinds still shrink.
        ratio = 1.5 if kind in m.GATEWAY_KINDS else 3
        assert len(payload) * ratio < len(wire.encode_cbor(msg))
    assert wire.encoded_size(msg, ZSTD) == len(payload)
    # Without its dictionary the frame does not decode: the number in the content type matters.
    [(err, _)] = wire.decode(payload, wire.CBOR_ZSTD, kind)
    assert isinstance(err, m.MessageError) and err.reason == "bad_compression"


def test_the_shipped_dictionary_is_pinned() -> None:
    assert len(wire.dictionary(1).as_bytes()) > 1000  # loads, and matches its sha256
    with pytest.raises(m.MessageError) as err:
        wire.dictionary(99)
    assert err.value.reason == "unknown_dictionary"


@pytest.mark.parametrize("settings", [BATCH, PLAIN_BATCH], ids=["zstd", "plain"])
def test_a_batch_keeps_each_message_and_its_msg_id(settings: wire.WireSettings) -> None:
    msgs = [fresh("detection") for _ in range(10)]
    payload, ctype = wire.encode_batch([x.to_json() for x in msgs], settings)
    assert ctype == (wire.BATCH_COMPRESSED if settings.compress else wire.BATCH_CBOR)
    back = wire.decode_one(payload, ctype, "detection")
    assert back == msgs and len({x.msg_id for x in back}) == 10
    if settings.compress:
        assert len(payload) < sum(len(x.to_json()) for x in msgs) / 4


def test_json_is_the_default_and_a_missing_content_type_means_json() -> None:
    msg = fresh("telemetry")
    assert wire.encode(msg, wire.WireSettings()) == (msg.to_json(), wire.JSON)
    assert wire.payload_format(wire.JSON) == 1
    for ctype in (None, "", "application/json", "Application/JSON; charset=utf-8"):
        assert wire.decode_one(msg.to_json(), ctype, "telemetry") == [msg]


def _cbor_doc(kind: str) -> dict[str, object]:
    return wire.to_document(fresh(kind))


@pytest.mark.parametrize(
    ("change", "reason", "needle"),
    [
        (lambda d: d.__setitem__("surprise", 1), "schema", "surprise"),
        (lambda d: d.pop("msg_id"), "schema", "msg_id"),  # never filled in from the wire
        (lambda d: d.pop("observed_at"), "schema", "observed_at"),
        (lambda d: d.__setitem__("schema_version", 2), "unknown_schema_version", "schema_version"),
        (lambda d: d.__setitem__("kind", "gossip"), "unknown_kind", "gossip"),
        (lambda d: d["readings"][0].__setitem__("value", float("nan")), "non_finite", "finite"),  # type: ignore[index]
        (lambda d: d["readings"][0].__setitem__("value", float("inf")), "non_finite", "finite"),  # type: ignore[index]
    ],
)
def test_bad_cbor_messages_are_refused_with_a_reason(change, reason: str, needle: str) -> None:  # type: ignore[no-untyped-def]
    doc = _cbor_doc("telemetry")
    change(doc)
    [(err, raw)] = wire.decode(cbor2.dumps(doc), wire.CBOR, "telemetry")
    assert isinstance(err, m.MessageError) and err.reason == reason, err
    assert needle in str(err)
    assert raw == cbor2.dumps(doc)


def test_a_sample_image_must_be_bytes_in_cbor_and_a_jpeg() -> None:
    doc = _cbor_doc("sample")
    doc["image_jpeg"] = base64.b64encode(doc["image_jpeg"]).decode()  # type: ignore[arg-type]
    [(err, _)] = wire.decode(cbor2.dumps(doc), wire.CBOR, "sample")
    assert isinstance(err, m.MessageError) and "byte string" in str(err)
    doc["image_jpeg"] = b"GIF89a"
    [(err, _)] = wire.decode(cbor2.dumps(doc), wire.CBOR, "sample")
    assert isinstance(err, m.MessageError) and "JPEG" in str(err)


def test_kind_must_match_the_topic() -> None:
    [(err, _)] = wire.decode(wire.encode_cbor(fresh("event")), wire.CBOR, "detection")
    assert isinstance(err, m.MessageError) and err.reason == "kind_mismatch"


def test_one_bad_message_in_a_batch_leaves_the_others_standing() -> None:
    good = [_cbor_doc("detection") for _ in range(3)]
    bad = dict(good[1], top_k=[])
    payload = zstandard.ZstdCompressor().compress(cbor2.dumps([good[0], bad, good[2]]))
    out = wire.decode(payload, wire.BATCH_CBOR_ZSTD, "detection")
    assert [isinstance(x, m.MessageError) for x, _ in out] == [False, True, False]
    assert out[1][1] == cbor2.dumps(bad)  # the dead letter keeps the one bad message


@pytest.mark.parametrize(
    ("payload", "ctype", "reason"),
    [
        (b"\xff\x00", wire.CBOR, "invalid_cbor"),
        (b"not zstd", wire.BATCH_CBOR_ZSTD, "bad_compression"),
        (cbor2.dumps({"a": 1}), wire.BATCH_CBOR, "bad_batch"),
        (cbor2.dumps([]), wire.BATCH_CBOR, "bad_batch"),
        (cbor2.dumps([1] * (wire.MAX_BATCH_MESSAGES + 1)), wire.BATCH_CBOR, "bad_batch"),
        # A bomb: 64 MiB of zeros in a few KB; refused from the frame header, never inflated.
        (zstandard.ZstdCompressor().compress(bytes(64 << 20)), wire.BATCH_CBOR_ZSTD, "too_large"),
        (b"x" * (m.MAX_PAYLOAD_BYTES + 1), wire.CBOR, "too_large"),
        (b"{}", "text/plain", "unknown_content_type"),
        (zstandard.ZstdCompressor().compress(bytes(1 << 20)), wire.CBOR_ZSTD, "too_large"),
        (b"x", f"{wire.CBOR_ZSTD}; dict=9", "unknown_dictionary"),
        (b"x", f"{wire.BATCH_CBOR_ZSTD}; dict=x", "unknown_dictionary"),
    ],
    ids=["cbor", "zstd", "not-array", "empty", "too-many", "bomb", "big", "content-type", "bomb1", "dict", "dict-x"],
)
def test_unusable_payloads_give_one_clear_error(payload: bytes, ctype: str, reason: str) -> None:
    # A batch that cannot be opened raises; a single message comes back as its own error.
    try:
        [(err, _)] = wire.decode(payload, ctype, "detection")
    except m.MessageError as raised:
        err = raised
    assert isinstance(err, m.MessageError) and err.reason == reason, err


def test_a_zstd_frame_without_its_size_is_refused() -> None:
    cobj = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    payload = cobj.compress(cbor2.dumps([_cbor_doc("detection")])) + cobj.flush()
    with pytest.raises(m.MessageError) as err:
        wire.decode(payload, wire.BATCH_CBOR_ZSTD, "detection")
    assert err.value.reason == "too_large"


def test_batches_need_cbor() -> None:
    with pytest.raises(ValueError, match="encoding"):
        wire.WireSettings(encoding="json", batch_max_messages=5)
    assert not CBOR.batching and BATCH.batching


def test_encode_batch_refuses_more_than_the_limit() -> None:
    with pytest.raises(ValueError, match="1 to"):
        wire.encode_batch([], BATCH)


def _property_block(**values: object) -> bytes:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    for name, value in values.items():
        setattr(props, name, value)
    return bytes(props.pack())  # type: ignore[no-untyped-call]


@pytest.mark.parametrize(
    "values",
    [
        {"ContentType": wire.BATCH_CBOR_ZSTD, "PayloadFormatIndicator": 0},
        {"MessageExpiryInterval": 60, "UserProperty": [("a", "b")], "ContentType": wire.CBOR},
        {"ResponseTopic": "x/y", "CorrelationData": b"12", "SubscriptionIdentifier": 300},
        {},
    ],
)
def test_ingest_reads_the_content_type_from_a_publish_property_block(values: dict[str, object]) -> None:
    block = _property_block(**values)
    length, pos = _varint(block, 0)
    assert pos + length == len(block)
    assert _content_type(block, pos, pos + length) == values.get("ContentType")


def test_cropwatch_schema_lists_the_wire_forms(capsys: pytest.CaptureFixture[str]) -> None:
    from shared.commands import _schema

    assert _schema(["--wire"], "cropwatch schema") == 0
    forms = json.loads(capsys.readouterr().out)
    assert [f["content_type"] for f in forms] == [c for c, _, _ in wire.FORMS]
    assert wire.BATCH_COMPRESSED in {f["content_type"] for f in forms}
