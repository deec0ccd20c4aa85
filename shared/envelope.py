"""The envelope every Cropwatch message carries (shared.messages re-exports it).

A module of its own so the gateway's message kinds (shared.gateway_messages) can build on it
without importing shared.messages, which lists them in its unions.
"""

from __future__ import annotations

from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ValidationInfo, model_validator

from . import SCHEMA_VERSION
from .fields import STRICT_MODEL, Id, MsgId, UtcDatetime
from .ids import new_msg_id, utcnow

# Validation context flag: the data came off the wire (CBOR), so nothing may be filled in.
WIRE_CONTEXT_KEY = "from_wire"


class Envelope(BaseModel):
    """Fields every message carries."""

    model_config = STRICT_MODEL
    schema_version: Literal[1]
    msg_id: MsgId
    farm_id: Id
    device_id: Id
    observed_at: UtcDatetime

    @model_validator(mode="before")
    @classmethod
    def _fill_when_built_in_code(cls, data: Any, info: ValidationInfo) -> Any:
        # Code that builds a message gets a fresh msg_id, the current time and the kind; a payload
        # from the wire must carry them, or ingest could not deduplicate it. A binary payload
        # (shared.wire) is validated in python mode too, so it says so in the context.
        from_wire = isinstance(info.context, dict) and info.context.get(WIRE_CONTEXT_KEY)
        if info.mode == "python" and isinstance(data, dict) and not from_wire:
            data = dict(data)
            data.setdefault("schema_version", SCHEMA_VERSION)
            data.setdefault("msg_id", new_msg_id())
            data.setdefault("observed_at", utcnow())
            # A one-value Literal (the fleet's device_id) is implied by the class in code, but
            # still required on the wire.
            for name, field in cls.model_fields.items():
                args = get_args(field.annotation)
                if (
                    name not in data
                    and field.is_required()
                    and get_origin(field.annotation) is Literal
                    and len(args) == 1
                ):
                    data[name] = args[0]
        return data

    def to_json(self) -> bytes:
        return self.model_dump_json().encode("utf-8")
