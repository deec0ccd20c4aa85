"""One pydantic model per message kind; both ends validate with these.

Device to cloud: detection, yield, telemetry, sample, status, event (the topic's last segment).
Cloud to device: commands on ``cmd/{command}`` and the retained desired model on
``_fleet/model/{name}``. Unknown fields are rejected, floats must be finite, and every message
carries ``schema_version``, ``msg_id``, ``farm_id``, ``device_id`` and ``observed_at``.
The envelope (shared.envelope) and the gateway's own kinds (shared.gateway_messages) live in
modules of their own and are re-exported here.
"""

from __future__ import annotations

import base64
import json
from datetime import date
from typing import Annotated, Any, Literal, Union, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    PlainSerializer,
    SerializerFunctionWrapHandler,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    model_serializer,
    model_validator,
)

from . import SCHEMA_VERSION
from .envelope import WIRE_CONTEXT_KEY as WIRE_CONTEXT_KEY, Envelope as Envelope
from .errors import MessageError
from .fields import STRICT_MODEL, Id, Label, MsgId, Probability, Sha256Hex, ShortText, UtcDatetime, Version
from .gateway_messages import (
    GATEWAY_KINDS as GATEWAY_KINDS,
    GatewayStatus as GatewayStatus,
    LabelMessage as LabelMessage,
)
from .ids import new_msg_id as new_msg_id, utcnow as utcnow  # callers and tests reach them through this module
from .manifest import ModelManifest, Signature, TrustedKeys, Variant, canonical_json, sign_bytes, verify_bytes
from .message_parts import (
    ActiveModel as ActiveModel,
    Health as Health,
    LabelScore as LabelScore,
    ModelRef as ModelRef,
    RadioLink as RadioLink,
    SensorHealth as SensorHealth,
    SensorReading as SensorReading,
    ShadowResult as ShadowResult,
    TopK as TopK,
    YieldQuantiles as YieldQuantiles,
)

MAX_SAMPLE_IMAGE_BYTES = 256 * 1024
# A sample's JPEG in base64 plus its metadata; anything larger is refused before parsing.
MAX_PAYLOAD_BYTES = 384 * 1024
# The retained desired-model message carries a manifest, which may hold a small inline tensor.
MAX_FLEET_PAYLOAD_BYTES = 1024 * 1024

DEVICE_KINDS = ("detection", "yield", "telemetry", "sample", "status", "event", "gateway_status", "label")
COMMANDS = ("capture_now", "reload_config", "set_log_level", "ping")
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
# ok: answered; uncertain: the model abstained (docs/disease-model.md); not_a_leaf: the leaf gate refused the frame.
DetectionStatus = Literal["ok", "uncertain", "not_a_leaf"]
# `uncertain` samples go to labelling ahead of every other kind (docs/edge-agent.md).
SampleReason = Literal["low_confidence", "requested", "random", "shadow_disagreement", "uncertain"]


class Detection(Envelope):
    """A leaf-disease classification of one image."""

    kind: Literal["detection"] = "detection"
    model: ModelRef
    source: Id = Field(description="Name of the source in the agent config.")
    image_ref: Annotated[str, StringConstraints(min_length=1, max_length=512)]
    image_sha256: Sha256Hex | None = None
    field_id: Id | None = None
    top_k: TopK
    inference_ms: Annotated[float, Field(ge=0)] | None = None
    shadow: ShadowResult | None = None
    status: DetectionStatus = Field(
        "ok",
        description="`uncertain`: below the model's abstention threshold (top_k kept, never counted as a "
        "disease); `not_a_leaf`: the leaf gate rejected the frame (top_k is what the classifier said). "
        "Absent in payloads of agents older than it: `ok`.",
    )
    trust_score: float | None = Field(
        None, description="The manifest's abstention score (higher: more familiar); absent without one."
    )

    @model_serializer(mode="wrap")
    def _omit_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Left out while at their defaults, so a plain detection is byte-for-byte what older
        # ingests (extra fields forbidden) accept.
        doc: dict[str, Any] = handler(self)
        if self.status == "ok":
            doc.pop("status", None)
        if self.trust_score is None:
            doc.pop("trust_score", None)
        return doc

    @property
    def answered(self) -> bool:
        return self.status == "ok"

    @property
    def label(self) -> str:
        return self.top_k[0].label

    @property
    def confidence(self) -> float:
        return self.top_k[0].probability


class YieldEstimate(Envelope):
    """The yield outlook for a field, from the season so far."""

    kind: Literal["yield"] = "yield"
    model: ModelRef
    field_id: Id | None = None
    crop: Id | None = None
    season_start: date
    days_into_season: Annotated[int, Field(ge=0, le=1000)]
    season_progress: Annotated[float, Field(ge=0.0, le=1.0)]
    expected: float
    quantiles: YieldQuantiles
    unit: Annotated[str, StringConstraints(min_length=1, max_length=32)]


class Telemetry(Envelope):
    """Sensor readings taken at ``observed_at``, with the channels whose health is in doubt.

    ``sensor_health`` (added after schema 1 shipped, optional, so older payloads stay valid) lists
    each flagged channel in every message while the flag holds; a flagged reading is still in
    ``readings``. A message may carry no readings only when it carries flags (every channel missing).
    """

    kind: Literal["telemetry"] = "telemetry"
    field_id: Id | None = None
    readings: Annotated[list[SensorReading], Field(max_length=64)]
    sensor_health: Annotated[list[SensorHealth], Field(max_length=64)] = Field(default_factory=list)
    link: RadioLink | None = Field(None, description="Radio link of a bridged sensor (LoRaWAN); absent otherwise.")
    interval_s: Annotated[float, Field(gt=0, le=86400)] | None = Field(
        None,
        description="Aggregated telemetry (metered link): the readings summarise this many seconds ending at "
        "observed_at; absent for raw readings.",
    )

    @model_validator(mode="after")
    def _something_to_say(self) -> Telemetry:
        if not self.readings and not self.sensor_health:
            raise ValueError("telemetry needs at least one reading or one sensor_health flag")
        return self


def _from_base64(value: Any) -> Any:
    """Raw bytes in Python, base64 text on the wire."""
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except ValueError as exc:
            raise ValueError(f"image_jpeg is not valid base64: {exc}") from None
    return value


def _is_jpeg(data: bytes) -> bytes:
    if len(data) > MAX_SAMPLE_IMAGE_BYTES:
        raise ValueError(f"sample image is {len(data)} bytes; the limit is {MAX_SAMPLE_IMAGE_BYTES} (256 KiB)")
    if not data.startswith(b"\xff\xd8\xff"):
        raise ValueError("sample image must be a JPEG")
    return data


JpegBytes = Annotated[
    bytes,
    BeforeValidator(_from_base64),
    AfterValidator(_is_jpeg),
    PlainSerializer(lambda b: base64.b64encode(b).decode("ascii"), return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "contentEncoding": "base64", "contentMediaType": "image/jpeg"}),
]


class Sample(Envelope):
    """An image sent for labelling (low confidence, on request, or a shadow disagreement)."""

    kind: Literal["sample"] = "sample"
    reason: SampleReason
    model: ModelRef | None = None
    detection_msg_id: MsgId | None = None
    field_id: Id | None = None
    source: Id | None = None
    image_ref: Annotated[str, StringConstraints(max_length=512)] | None = None
    predicted_label: Label | None = None
    confidence: Probability | None = None
    width: Annotated[int, Field(ge=1, le=65535)]
    height: Annotated[int, Field(ge=1, le=65535)]
    image_jpeg: JpegBytes = Field(description="Base64 of a JPEG of at most 256 KiB.")


class Status(Envelope):
    """Retained. ``online`` with health as the heartbeat; the last will says ``offline``."""

    kind: Literal["status"] = "status"
    state: Literal["online", "offline"]
    since: UtcDatetime
    agent_version: Version
    models: Annotated[list[ActiveModel], Field(max_length=16)] = Field(default_factory=list)
    health: Health | None = None
    reason: ShortText | None = None
    next_contact_at: UtcDatetime | None = Field(
        None,
        description="A device that sleeps between uplink windows or reports only on change: it will have "
        "said something by then. The offline alert waits for this plus its grace.",
    )


EventValue = Union[str, int, float, bool, None]  # noqa: UP007 - JSON Schema reads better this way


class Event(Envelope):
    """Something happened on the device: a model swap, a refused command, an error."""

    kind: Literal["event"] = "event"
    level: LogLevel
    code: Id
    message: Annotated[str, StringConstraints(max_length=2000)]
    details: dict[Annotated[str, StringConstraints(max_length=64)], EventValue] = Field(
        default_factory=dict, max_length=32
    )


# --- cloud to device ---------------------------------------------------------------------------


class CommandBase(Envelope):
    """A command to one device; ``device_id`` is the target. Retained commands are ignored."""

    kind: Literal["command"] = "command"
    expires_at: UtcDatetime | None = None


class CaptureNow(CommandBase):
    command: Literal["capture_now"] = "capture_now"
    source: Id | None = None


class ReloadConfig(CommandBase):
    command: Literal["reload_config"] = "reload_config"


class SetLogLevel(CommandBase):
    command: Literal["set_log_level"] = "set_log_level"
    level: LogLevel


class Ping(CommandBase):
    command: Literal["ping"] = "ping"


Command = Annotated[Union[CaptureNow, ReloadConfig, SetLogLevel, Ping], Field(discriminator="command")]  # noqa: UP007


class Artifact(BaseModel):
    model_config = STRICT_MODEL
    variant: Variant
    url: Annotated[str, StringConstraints(pattern=r"^https?://", max_length=4096)]
    sha256: Sha256Hex
    size: Annotated[int, Field(gt=0)]


class RolloutPolicy(BaseModel):
    """Which devices of the farm take the model: all listed conditions must hold."""

    model_config = STRICT_MODEL
    mode: Literal["active", "shadow"] = "active"
    percent: Annotated[float, Field(ge=0, le=100)] = 100.0
    devices: list[Id] | None = None
    group: Id | None = None


class DesiredModel(Envelope):
    """Retained per farm and model name: which version devices should run (``_fleet/model/{name}``),
    or which challenger they run beside it (``rollout.mode`` shadow, ``_fleet/shadow/{name}``).

    ``signature``, when present, is an Ed25519 signature over the canonical JSON of the whole
    message without it, so the rollout policy, artifact URLs, ``previous_version`` and
    ``allow_downgrade`` are protected as the manifest is.
    """

    kind: Literal["desired_model"] = "desired_model"
    device_id: Literal["_fleet"]
    model_name: Id
    version: Version
    manifest: ModelManifest
    artifacts: Annotated[list[Artifact], Field(min_length=1, max_length=4)]
    rollout: RolloutPolicy = Field(default_factory=RolloutPolicy)
    previous_version: Version | None = None
    allow_downgrade: bool = False
    signature: Signature | None = Field(
        None, description="Ed25519 over the canonical JSON of this message without `signature` (optional)."
    )

    def canonical_bytes(self) -> bytes:
        return canonical_json(self.model_dump(mode="json", exclude={"signature"}))

    def signed(self, private_key: Any) -> DesiredModel:
        """This message signed with an Ed25519 private key (``shared.manifest.load_private_key``)."""
        return self.model_copy(update={"signature": sign_bytes(self.canonical_bytes(), private_key)})

    def verify(self, trusted: TrustedKeys) -> str:
        """Check the envelope signature; raises ManifestError (``rollout_unsigned``, ...)."""
        what = f"desired-model message {self.model_name} {self.version} ({self.msg_id})"
        return verify_bytes(self.signature, self.canonical_bytes(), trusted, what, reason_prefix="rollout_")

    @model_validator(mode="after")
    def _consistent(self) -> DesiredModel:
        if self.manifest.name != self.model_name or self.manifest.version != self.version:
            raise ValueError("model_name and version must match the manifest")
        for art in self.artifacts:
            entry = self.manifest.file(art.variant)
            if (entry.sha256, entry.size) != (art.sha256, art.size):
                raise ValueError(f"artifact {art.variant} disagrees with the manifest's sha256/size")
        return self


DeviceMessage = Annotated[
    Union[Detection, YieldEstimate, Telemetry, Sample, Status, Event, GatewayStatus, LabelMessage],  # noqa: UP007
    Field(discriminator="kind"),
]

MESSAGE_TYPES: dict[str, type[BaseModel]] = {
    "detection": Detection,
    "yield": YieldEstimate,
    "telemetry": Telemetry,
    "sample": Sample,
    "status": Status,
    "event": Event,
    "gateway_status": GatewayStatus,
    "label": LabelMessage,
    "capture_now": CaptureNow,
    "reload_config": ReloadConfig,
    "set_log_level": SetLogLevel,
    "ping": Ping,
    "desired_model": DesiredModel,
}

_device_adapter: TypeAdapter[Any] = TypeAdapter(DeviceMessage)
device_adapter = _device_adapter  # shared.wire validates decoded CBOR with the same adapter
_command_adapter: TypeAdapter[Any] = TypeAdapter(Command)


def _classify(payload: bytes, exc: ValidationError, known_kinds: tuple[str, ...]) -> MessageError:
    """Turn a failed validation into a reason an operator can act on."""
    non_finite: list[str] = []

    def _const(token: str) -> float:
        non_finite.append(token)
        return float("nan")

    try:
        doc = json.loads(payload, parse_constant=_const)
    except RecursionError:
        return MessageError("too_deep", "payload nests too deeply to be a Cropwatch message")
    except (ValueError, UnicodeDecodeError) as err:
        if any(e.get("type") == "recursion_loop" for e in exc.errors()):
            return MessageError("too_deep", "payload nests too deeply to be a Cropwatch message")
        return MessageError("invalid_json", f"payload is not UTF-8 JSON: {err}")
    if non_finite:
        return MessageError("non_finite", f"payload holds {non_finite[0]}; numbers must be finite")
    return classify_document(doc, exc, known_kinds)


def classify_document(doc: Any, exc: ValidationError, known_kinds: tuple[str, ...]) -> MessageError:
    """The reason a decoded document (from JSON or CBOR) failed validation."""
    if not isinstance(doc, dict):
        return MessageError("schema", f"payload must be a JSON object, got {type(doc).__name__}")
    if any(e.get("type") == "finite_number" for e in exc.errors()):
        return MessageError("non_finite", "payload holds a NaN or infinite number; numbers must be finite")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        return MessageError(
            "unknown_schema_version",
            f"schema_version {version!r} is not supported (this end speaks {SCHEMA_VERSION}); upgrade the older end",
        )
    kind = doc.get("kind")
    if kind not in known_kinds:
        return MessageError("unknown_kind", f"kind {kind!r} is not one of {', '.join(known_kinds)}")
    first = exc.errors(include_url=False)[:3]
    tags = set(MESSAGE_TYPES)

    def where(loc: tuple[int | str, ...]) -> str:
        # A discriminated union puts the tag first in the location; it says nothing to a reader.
        parts = loc[1:] if loc and loc[0] in tags else loc
        return ".".join(str(p) for p in parts) or "(root)"

    detail = "; ".join(f"{where(e['loc'])}: {e['msg']}" for e in first)
    return MessageError("schema", f"{kind} message is not valid: {detail}")


def _validate(adapter: TypeAdapter[Any], payload: bytes | str, kinds: tuple[str, ...], limit: int) -> Any:
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    if len(payload) > limit:
        raise MessageError("too_large", f"payload is {len(payload)} bytes; the limit is {limit}")
    try:
        return adapter.validate_json(payload)
    except ValidationError as exc:
        raise _classify(payload, exc, kinds) from None


def parse_device_message(payload: bytes | str, expected_kind: str | None = None) -> Envelope:
    """Validate a device-to-cloud payload; raises MessageError only."""
    msg = _validate(_device_adapter, payload, DEVICE_KINDS, MAX_PAYLOAD_BYTES)
    if expected_kind is not None and msg.kind != expected_kind:
        raise MessageError("kind_mismatch", f"payload kind {msg.kind!r} does not match topic kind {expected_kind!r}")
    return cast(Envelope, msg)  # each member of the DeviceMessage union is an Envelope


def parse_command(payload: bytes | str, expected_command: str | None = None) -> CommandBase:
    """Validate a cloud-to-device command; raises MessageError only."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    try:
        msg = _validate(_command_adapter, payload, ("command",), MAX_PAYLOAD_BYTES)
    except MessageError as err:
        if err.reason == "schema":
            try:
                name = json.loads(payload).get("command")
            except (ValueError, AttributeError, RecursionError):
                name = None
            if name not in COMMANDS:
                raise MessageError("unknown_command", f"command {name!r} is not one of {', '.join(COMMANDS)}") from None
        raise
    if expected_command is not None and msg.command != expected_command:
        raise MessageError(
            "kind_mismatch", f"payload command {msg.command!r} does not match topic command {expected_command!r}"
        )
    return cast(CommandBase, msg)  # each member of the Command union is a CommandBase


def parse_desired_model(payload: bytes | str) -> DesiredModel:
    """Validate a retained desired-model message; raises MessageError only."""
    desired = _validate(TypeAdapter(DesiredModel), payload, ("desired_model",), MAX_FLEET_PAYLOAD_BYTES)
    return cast(DesiredModel, desired)


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of every message kind, keyed by kind (commands by command name)."""
    return {name: cls.model_json_schema(mode="validation") for name, cls in MESSAGE_TYPES.items()}
