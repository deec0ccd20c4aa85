"""Device-to-cloud payload encodings: JSON (the reference) and CBOR, single or in zstd batches.

The MQTT v5 content type of a PUBLISH says which form its payload is in:

| content type | payload format indicator | payload |
|---|---|---|
| ``application/json`` (or none) | 1 (UTF-8) | one message as JSON, the reference form |
| ``application/cbor`` | 0 | one message as CBOR (RFC 8949) |
| ``application/vnd.cropwatch.cbor+zstd; dict=1`` | 0 | that CBOR, zstd-compressed with dictionary 1 |
| ``application/vnd.cropwatch.batch+cbor`` | 0 | a CBOR array of messages |
| ``application/vnd.cropwatch.batch+cbor+zstd; dict=1`` | 0 | that array, zstd-compressed (dictionary 1) |

Dictionary 1 (``wire_dict_1.cbor``, 2.3 KB) is a zstd raw-content dictionary: the CBOR of one example
message of each kind, frozen. It holds what every message repeats (keys, kinds, the envelope's
shape), so even a lone message compresses about five times. A zstd content type without ``dict``
means no dictionary; an unknown ``dict`` is refused. A new dictionary gets a new number and the old
one stays readable.

The CBOR form is the JSON document's data model, with the one binary field (a sample's
``image_jpeg``) as a CBOR byte string instead of base64 text; times stay RFC 3339 text. So a CBOR
message converts to the reference JSON and back without loss, and any generic CBOR tool shows the
same document. Both forms are validated by the same pydantic models (unknown fields rejected).

A batch holds messages of one kind from one device and is published on that kind's topic, so
topics, ACLs and the topic/kind check stay as they are; each message keeps its own ``msg_id``, so
ingest stores each exactly once however often the batch is redelivered.

There is no handshake: each PUBLISH carries its content type, ingest accepts every form from every
device, and a device picks its form in ``[uplink] encoding`` (negotiation by declaration, as HTTP's
Content-Type). Commands and the retained desired model (cloud to device) stay JSON.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Annotated, Any, Literal

import cbor2
import zstandard
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import MessageError
from .messages import (
    DEVICE_KINDS,
    MAX_PAYLOAD_BYTES,
    WIRE_CONTEXT_KEY,
    Envelope,
    classify_document,
    device_adapter,
    parse_device_message,
)

JSON = "application/json"
CBOR = "application/cbor"
CBOR_ZSTD = "application/vnd.cropwatch.cbor+zstd"
BATCH_CBOR = "application/vnd.cropwatch.batch+cbor"
BATCH_CBOR_ZSTD = "application/vnd.cropwatch.batch+cbor+zstd"
CONTENT_TYPES = (JSON, CBOR, CBOR_ZSTD, BATCH_CBOR, BATCH_CBOR_ZSTD)
# The zstd dictionaries this release reads, by number; it writes the newest.
DICTIONARIES = {1: ("wire_dict_1.cbor", "055a74798969c2afcf4b82bec72be01e7bbb928cc681d68df23c3caa4847b48f")}
DICT = max(DICTIONARIES)
# What this release writes when it compresses.
COMPRESSED = f"{CBOR_ZSTD}; dict={DICT}"
BATCH_COMPRESSED = f"{BATCH_CBOR_ZSTD}; dict={DICT}"

MAX_BATCH_MESSAGES = 256
# Decompressed, a batch may hold this much; a frame declaring more is refused before inflating.
MAX_BATCH_BYTES = 4 * 1024 * 1024
# Each form in words: the generated message reference and `cropwatch schema --wire` print these.
FORMS: tuple[tuple[str, int, str], ...] = (
    (JSON, 1, "one message as UTF-8 JSON; a PUBLISH without a content type is read as this"),
    (CBOR, 0, "one message as CBOR (RFC 8949): the JSON document, with image_jpeg as a byte string, not base64"),
    (COMPRESSED, 0, f"that CBOR in one zstd frame, compressed with dictionary {DICT}"),
    (BATCH_CBOR, 0, f"a CBOR array of 1 to {MAX_BATCH_MESSAGES} messages of the topic's kind, each with its msg_id"),
    (BATCH_COMPRESSED, 0, f"that array in one zstd frame (at most {MAX_BATCH_BYTES} B uncompressed)"),
)
ZSTD_LEVEL = 12
# A JPEG does not compress and one image is a publish of its own; the retained status skips the outbox.
UNBATCHED_KINDS = ("sample", "status")
_BYTES_FIELDS = ("image_jpeg",)


class WireSettings(BaseModel):
    """``[uplink]``: how this device encodes what it sends (docs/uplink.md "Wire encoding")."""

    model_config = ConfigDict(extra="forbid")
    encoding: Literal["json", "cbor"] = Field(
        "json", description="json: the reference contract, readable anywhere. cbor: the same messages in CBOR."
    )
    batch_max_messages: Annotated[int, Field(ge=1, le=MAX_BATCH_MESSAGES)] = Field(
        1, description="With cbor: up to this many messages of one kind in one PUBLISH (1: no batches)."
    )
    batch_max_delay_s: Annotated[float, Field(ge=0)] = Field(
        60.0, description="A message waits at most this long for others to share its batch."
    )
    compress: bool = Field(
        True, description="With cbor: zstd-compress every payload with the shipped dictionary (about 5x on a message)."
    )

    @model_validator(mode="after")
    def _batches_need_cbor(self) -> WireSettings:
        if self.batch_max_messages > 1 and self.encoding != "cbor":
            raise ValueError('batches are CBOR: set encoding = "cbor", or batch_max_messages = 1')
        return self

    @property
    def batching(self) -> bool:
        return self.encoding == "cbor" and self.batch_max_messages > 1


def payload_format(content_type: str) -> int:
    """The MQTT v5 payload format indicator for a content type: 1 for UTF-8 text, else 0."""
    return 1 if content_type == JSON else 0


def base_type(content_type: str | None) -> str:
    """``application/json; charset=utf-8`` -> ``application/json``; no content type means JSON."""
    if not content_type:
        return JSON
    return content_type.split(";", 1)[0].strip().lower()


def _dict_param(content_type: str | None) -> int | None:
    """The ``dict=N`` parameter of a content type, if any."""
    for param in (content_type or "").split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "dict":
            try:
                return int(value.strip().strip('"'))
            except ValueError:
                raise MessageError("unknown_dictionary", f"dict={value.strip()!r} is not a dictionary number") from None
    return None


@functools.cache
def dictionary(number: int) -> zstandard.ZstdCompressionDict:
    """A shipped zstd dictionary, checked against its pinned digest (a changed file must get a new number)."""
    if number not in DICTIONARIES:
        raise MessageError(
            "unknown_dictionary",
            f"zstd dictionary {number} is not known here (this end reads {sorted(DICTIONARIES)}); "
            "upgrade the older end",
        )
    name, digest = DICTIONARIES[number]
    data = resources.files(__package__).joinpath(name).read_bytes()
    if hashlib.sha256(data).hexdigest() != digest:
        raise RuntimeError(f"{name} does not match its pinned sha256: a shipped dictionary must never change")
    return zstandard.ZstdCompressionDict(data, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


def _compress(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, dict_data=dictionary(DICT)).compress(data)


# --- encoding ---------------------------------------------------------------------------------


def to_document(msg: Envelope) -> dict[str, Any]:
    """The message as the CBOR document: JSON's data model, binary fields as bytes."""
    doc = msg.model_dump(mode="json")
    for name in _BYTES_FIELDS:
        value = getattr(msg, name, None)
        if isinstance(value, bytes):
            doc[name] = value
    return doc


def encode_cbor(msg: Envelope) -> bytes:
    return cbor2.dumps(to_document(msg))


def encode(msg: Envelope, settings: WireSettings) -> tuple[bytes, str]:
    """One message in this device's encoding: (payload, content type)."""
    if settings.encoding == "json":
        return msg.to_json(), JSON
    if settings.compress:
        return _compress(encode_cbor(msg)), COMPRESSED
    return encode_cbor(msg), CBOR


def transcode(json_payload: bytes, settings: WireSettings) -> tuple[bytes, str]:
    """A stored JSON message in this device's encoding (the outbox keeps the reference form).

    JSON that does not parse is passed on as JSON: ingest then dead-letters it with its reason,
    which helps more than a device that stops sending.
    """
    if settings.encoding == "json":
        return json_payload, JSON
    try:
        msg = parse_device_message(json_payload)
    except MessageError:
        return json_payload, JSON
    return encode(msg, settings)


def encode_batch(json_payloads: Sequence[bytes], settings: WireSettings) -> tuple[bytes, str]:
    """Several stored JSON messages of one kind as one batch payload: (payload, content type)."""
    if not json_payloads or len(json_payloads) > MAX_BATCH_MESSAGES:
        raise ValueError(f"a batch holds 1 to {MAX_BATCH_MESSAGES} messages, not {len(json_payloads)}")
    docs = [to_document(parse_device_message(p)) for p in json_payloads]
    raw = cbor2.dumps(docs)
    if settings.compress:
        return _compress(raw), BATCH_COMPRESSED
    return raw, BATCH_CBOR


def encoded_size(message: Envelope | bytes, settings: WireSettings, topic: str = "") -> int:
    """Bytes the message costs as a single PUBLISH in this device's encoding: topic plus payload.

    ``message`` is a message or its stored JSON. In a compressed batch a message costs less (its
    share of the batch, not known until the batch is formed), so this is an upper bound.
    """
    if isinstance(message, bytes):
        payload, _ = transcode(message, settings)
    else:
        payload, _ = encode(message, settings)
    return len(topic.encode("utf-8")) + len(payload)


# --- decoding ---------------------------------------------------------------------------------


def _inflate(payload: bytes, content_type: str | None, limit: int) -> bytes:
    number = _dict_param(content_type)
    dict_data = dictionary(number) if number is not None else None
    try:
        params = zstandard.get_frame_parameters(payload)
    except zstandard.ZstdError as exc:
        raise MessageError("bad_compression", f"payload is not a zstd frame: {exc}") from None
    if params.content_size in (0, zstandard.CONTENTSIZE_UNKNOWN) or params.content_size > limit:
        raise MessageError(
            "too_large",
            f"zstd frame declares {params.content_size} bytes uncompressed; it must state its size, at most {limit}",
        )
    try:
        return zstandard.ZstdDecompressor(dict_data=dict_data).decompress(payload, max_output_size=limit)
    except zstandard.ZstdError as exc:
        raise MessageError("bad_compression", f"payload does not decompress: {exc}") from None


def _load_cbor(data: bytes) -> Any:
    try:
        return cbor2.loads(data)
    except RecursionError:
        raise MessageError("too_deep", "payload nests too deeply to be a Cropwatch message") from None
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError) as exc:
        raise MessageError("invalid_cbor", f"payload is not valid CBOR: {exc}") from None


def validate_document(doc: Any, expected_kind: str | None = None) -> Envelope:
    """Validate a decoded CBOR document with the contract's models; raises MessageError only."""
    if isinstance(doc, dict) and isinstance(doc.get("image_jpeg"), str):
        # The same field is bytes in CBOR; base64 text would pass the model but is not the form.
        raise MessageError("schema", "sample message is not valid: image_jpeg must be a CBOR byte string in CBOR")
    try:
        msg: Envelope = device_adapter.validate_python(doc, context={WIRE_CONTEXT_KEY: True})
    except ValidationError as exc:
        raise classify_document(doc, exc, DEVICE_KINDS) from None
    except RecursionError:
        raise MessageError("too_deep", "payload nests too deeply to be a Cropwatch message") from None
    if expected_kind is not None and msg.kind != expected_kind:  # type: ignore[attr-defined]
        raise MessageError(
            "kind_mismatch",
            f"payload kind {msg.kind!r} does not match topic kind {expected_kind!r}",  # type: ignore[attr-defined]
        )
    return msg


def decode(
    payload: bytes, content_type: str | None, expected_kind: str | None = None
) -> list[tuple[Envelope | MessageError, bytes]]:
    """Every message of one PUBLISH, each with the bytes that stand for it (for a dead letter).

    Raises MessageError when the payload as a whole is unusable (unknown content type, bad
    compression, not a batch); inside a batch one bad message is its own error, the rest stand.
    """
    ct = base_type(content_type)
    if ct == JSON:
        try:
            return [(parse_device_message(payload, expected_kind), payload)]
        except MessageError as err:
            return [(err, payload)]
    if ct not in CONTENT_TYPES:
        raise MessageError(
            "unknown_content_type", f"content type {content_type!r} is not one of {', '.join(CONTENT_TYPES)}"
        )
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise MessageError("too_large", f"payload is {len(payload)} bytes; the limit is {MAX_PAYLOAD_BYTES}")
    if ct in (CBOR, CBOR_ZSTD):
        try:
            data = _inflate(payload, content_type, MAX_PAYLOAD_BYTES) if ct == CBOR_ZSTD else payload
            return [(validate_document(_load_cbor(data), expected_kind), payload)]
        except MessageError as err:
            return [(err, payload)]
    data = _inflate(payload, content_type, MAX_BATCH_BYTES) if ct == BATCH_CBOR_ZSTD else payload
    docs = _load_cbor(data)
    if not isinstance(docs, list) or not 1 <= len(docs) <= MAX_BATCH_MESSAGES:
        got = f"{len(docs)} items" if isinstance(docs, list) else type(docs).__name__
        raise MessageError(
            "bad_batch", f"a batch must be a CBOR array of 1 to {MAX_BATCH_MESSAGES} messages, not {got}"
        )
    out: list[tuple[Envelope | MessageError, bytes]] = []
    for doc in docs:
        raw = cbor2.dumps(doc)
        try:
            out.append((validate_document(doc, expected_kind), raw))
        except MessageError as err:
            out.append((err, raw))
    return out


def decode_one(payload: bytes, content_type: str | None, expected_kind: str | None = None) -> list[Envelope]:
    """Like :func:`decode`, but the first bad message raises (for tools and tests)."""
    out: list[Envelope] = []
    for item, _ in decode(payload, content_type, expected_kind):
        if isinstance(item, MessageError):
            raise item
        out.append(item)
    return out


def to_json_document(doc: dict[str, Any]) -> dict[str, Any]:
    """A CBOR document as the reference JSON document (bytes back to base64), for display."""
    return {k: base64.b64encode(v).decode("ascii") if isinstance(v, bytes) else v for k, v in doc.items()}
