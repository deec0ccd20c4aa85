"""The message kinds only a farm gateway sends (under its own id); shared.messages re-exports them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from .envelope import Envelope
from .fields import Id, Label, MsgId, UtcDatetime, Version

# A field device's ACL does not grant these kinds.
GATEWAY_KINDS = ("gateway_status", "label")


class GatewayStatus(Envelope):
    """A farm gateway's health, sent up its bridge to the cloud (``device_id`` is the gateway's id).

    Mosquitto does not expose one bridge's queue, so ``queued_bytes``/``queued_messages`` are the
    gateway broker's whole message store (``$SYS/broker/store/messages/*``) and ``backlog_since`` is
    when the uplink went down: every message since then waits in the bridge queue.
    """

    kind: Literal["gateway_status"] = "gateway_status"
    bridge: Id = Field(description="The bridge connection's name in the gateway's mosquitto.conf.")
    uplink: Literal["up", "down", "unknown"]
    uplink_since: UtcDatetime | None = Field(None, description="When the uplink last changed state, as seen here.")
    backlog_since: UtcDatetime | None = Field(None, description="Oldest message that may still wait: the cut.")
    queued_bytes: Annotated[int, Field(ge=0)] | None = None
    queued_messages: Annotated[int, Field(ge=0)] | None = None
    disk_free_bytes: Annotated[int, Field(ge=0)] | None = None
    disk_total_bytes: Annotated[int, Field(ge=0)] | None = None
    gateway_version: Version


class LabelMessage(Envelope):
    """A label a person gave a sample in a farm's own monitor, sent up the gateway's bridge.

    ``msg_id`` is the label row's own id (the monitor gives each label one), so the cloud stores
    it once however often it arrives; ``device_id`` is the gateway's id.
    """

    kind: Literal["label"] = "label"
    sample_msg_id: MsgId
    label: Label
    labelled_by: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    labelled_at: UtcDatetime
    note: Annotated[str, StringConstraints(max_length=2000)] | None = None
