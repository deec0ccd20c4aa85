"""How big the bridge queue must be for a farm to stay offline for a given time without loss.

Mosquitto holds a client's queued QoS 1 messages in memory (and in its persistence file on disk),
and counts each against ``max_queued_messages`` and ``max_queued_bytes`` (payload bytes). While the
uplink is down, every device message of the farm waits in the bridge's queue, so::

    messages = devices * (messages_per_hour * 24 + samples_per_day) * days
    bytes    = devices * (messages_per_hour * 24 * message_bytes + samples_per_day * sample_bytes) * days
    limit    = ceil(value * (1 + margin))

``memory_bytes`` adds Mosquitto's own cost per stored message (topic, properties, list nodes;
about 250 bytes measured on 2.0) so the operator sees the RAM the gateway needs for that outage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Mosquitto 2.0's per-message overhead beyond the payload (struct mosquitto_msg_store, topic, queue node).
STORE_OVERHEAD_BYTES = 250


@dataclass(frozen=True)
class Fleet:
    devices: int = 20
    messages_per_hour: float = 120.0  # per device: detections, telemetry, status heartbeats
    message_bytes: int = 900  # a detection with top-5 and model ref is ~700-900 bytes of JSON
    samples_per_day: float = 20.0  # per device: low-confidence images for labelling
    sample_bytes: int = 120_000  # base64 JPEG plus metadata; at most 384 KiB
    offline_days: float = 7.0
    margin: float = 0.25

    def __post_init__(self) -> None:
        for name in (
            "devices",
            "messages_per_hour",
            "message_bytes",
            "samples_per_day",
            "sample_bytes",
            "offline_days",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.devices < 1 or self.offline_days <= 0:
            raise ValueError("devices must be at least 1 and offline_days above 0")


@dataclass(frozen=True)
class QueueSize:
    messages: int
    bytes: int
    memory_bytes: int

    @property
    def max_queued_messages(self) -> int:
        return self.messages

    @property
    def max_queued_bytes(self) -> int:
        return self.bytes


def queue_size(fleet: Fleet) -> QueueSize:
    per_device_day_msgs = fleet.messages_per_hour * 24 + fleet.samples_per_day
    per_device_day_bytes = (
        fleet.messages_per_hour * 24 * fleet.message_bytes + fleet.samples_per_day * fleet.sample_bytes
    )
    scale = fleet.devices * fleet.offline_days * (1 + fleet.margin)
    messages = math.ceil(per_device_day_msgs * scale)
    size = math.ceil(per_device_day_bytes * scale)
    return QueueSize(messages=messages, bytes=size, memory_bytes=size + messages * STORE_OVERHEAD_BYTES)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
