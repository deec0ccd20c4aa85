"""The MQTT topic tree of the design, built and parsed in one place.

cropwatch/v1/{farm_id}/{device_id}/{kind}            device to cloud
cropwatch/v1/{farm_id}/{device_id}/cmd/{command}     cloud to one device
cropwatch/v1/{farm_id}/_fleet/model/{model_name}     retained desired model per farm
cropwatch/v1/{farm_id}/_fleet/shadow/{model_name}    retained challenger run beside it (shadow mode)

The shadow topic is separate so that publishing a challenger never replaces the retained champion a
newly started device needs; an empty retained payload there ends the shadow run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .errors import TopicError
from .ids import is_valid_id
from .messages import COMMANDS, DEVICE_KINDS

ROOT = "cropwatch"
VERSION = "v1"
FLEET = "_fleet"
PREFIX = f"{ROOT}/{VERSION}"


@dataclass(frozen=True)
class Topic:
    category: Literal["device", "command", "fleet_model", "fleet_shadow"]
    farm_id: str
    device_id: str | None = None
    kind: str | None = None
    command: str | None = None
    model_name: str | None = None

    def __str__(self) -> str:
        if self.category == "device":
            return device_topic(self.farm_id, self.device_id or "", self.kind or "")
        if self.category == "command":
            return command_topic(self.farm_id, self.device_id or "", self.command or "")
        if self.category == "fleet_shadow":
            return fleet_shadow_topic(self.farm_id, self.model_name or "")
        return fleet_model_topic(self.farm_id, self.model_name or "")


def _check_id(what: str, value: str) -> None:
    if not is_valid_id(value):
        raise TopicError("bad_id", f"{what} {value!r} must match [a-z0-9][a-z0-9_-]{{0,63}}")


def device_topic(farm_id: str, device_id: str, kind: str) -> str:
    _check_id("farm_id", farm_id)
    _check_id("device_id", device_id)
    if kind not in DEVICE_KINDS:
        raise TopicError("unknown_kind", f"kind {kind!r} is not one of {', '.join(DEVICE_KINDS)}")
    return f"{PREFIX}/{farm_id}/{device_id}/{kind}"


def command_topic(farm_id: str, device_id: str, command: str) -> str:
    _check_id("farm_id", farm_id)
    _check_id("device_id", device_id)
    if command not in COMMANDS:
        raise TopicError("unknown_command", f"command {command!r} is not one of {', '.join(COMMANDS)}")
    return f"{PREFIX}/{farm_id}/{device_id}/cmd/{command}"


def fleet_model_topic(farm_id: str, model_name: str) -> str:
    _check_id("farm_id", farm_id)
    _check_id("model_name", model_name)
    return f"{PREFIX}/{farm_id}/{FLEET}/model/{model_name}"


def fleet_shadow_topic(farm_id: str, model_name: str) -> str:
    _check_id("farm_id", farm_id)
    _check_id("model_name", model_name)
    return f"{PREFIX}/{farm_id}/{FLEET}/shadow/{model_name}"


def parse_topic(topic: str) -> Topic:
    """Parse a concrete topic (never a filter); raises TopicError naming what is wrong."""
    if not isinstance(topic, str):
        raise TopicError("not_a_string", "topic must be a string")
    if "+" in topic or "#" in topic:
        raise TopicError("wildcard", f"topic {topic!r} contains a wildcard; only filters may")
    if "\x00" in topic:
        raise TopicError("bad_id", "topic contains a NUL character")
    parts = topic.split("/")
    if any(p == "" for p in parts):
        raise TopicError("empty_segment", f"topic {topic!r} has an empty segment")
    if parts[0] != ROOT:
        raise TopicError("wrong_prefix", f"topic {topic!r} does not start with {ROOT}/")
    if len(parts) < 2 or parts[1] != VERSION:
        got = parts[1] if len(parts) > 1 else "(none)"
        raise TopicError("wrong_version", f"topic version {got!r} is not {VERSION!r}")
    rest = parts[2:]
    if len(rest) < 3:
        raise TopicError("wrong_length", f"topic {topic!r} has too few segments")
    farm_id = rest[0]
    _check_id("farm_id", farm_id)
    if rest[1] == FLEET:
        if len(rest) == 4 and rest[2] in ("model", "shadow"):
            _check_id("model_name", rest[3])
            return Topic("fleet_model" if rest[2] == "model" else "fleet_shadow", farm_id, model_name=rest[3])
        raise TopicError(
            "wrong_length", f"fleet topic {topic!r} must be {PREFIX}/FARM/{FLEET}/model/NAME or .../shadow/NAME"
        )
    device_id = rest[1]
    _check_id("device_id", device_id)
    if len(rest) == 3:
        kind = rest[2]
        if kind not in DEVICE_KINDS:
            raise TopicError("unknown_kind", f"kind {kind!r} is not one of {', '.join(DEVICE_KINDS)}")
        return Topic("device", farm_id, device_id=device_id, kind=kind)
    if len(rest) == 4 and rest[2] == "cmd":
        command = rest[3]
        if command not in COMMANDS:
            raise TopicError("unknown_command", f"command {command!r} is not one of {', '.join(COMMANDS)}")
        return Topic("command", farm_id, device_id=device_id, command=command)
    raise TopicError("wrong_length", f"topic {topic!r} does not fit the topic tree")


def device_filter(farm_id: str = "+", device_id: str = "+", kind: str = "+") -> str:
    """Subscription filter for device-to-cloud messages (``+`` as a wildcard)."""
    for what, value in (("farm_id", farm_id), ("device_id", device_id)):
        if value != "+":
            _check_id(what, value)
    if kind != "+" and kind not in DEVICE_KINDS:
        raise TopicError("unknown_kind", f"kind {kind!r} is not one of {', '.join(DEVICE_KINDS)}")
    return f"{PREFIX}/{farm_id}/{device_id}/{kind}"


def shared_subscription(group: str, topic_filter: str) -> str:
    """An MQTT v5 shared subscription: the broker gives each message to one member of ``group``."""
    _check_id("group", group)
    return f"$share/{group}/{topic_filter}"
