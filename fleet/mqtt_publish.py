"""One retained publish to the broker: the only module of fleet that imports paho.

``cropwatch models publish/rollback/promote`` write one retained message and exit, so this is a
connect, publish at QoS 1, wait for the PUBACK, disconnect; a refusal (MQTT v5 reason code, e.g.
not authorised) is an error, not a silent drop.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

logger = logging.getLogger(__name__)
# How rollout sends one message: ``publisher(topic, payload)``; tests pass a fake.
Publisher = Callable[[str, bytes], None]


class PublishError(Exception):
    """The message did not reach the broker, or the broker refused it."""


@dataclass
class BrokerUrl:
    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerUrl:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise PublishError(f"broker URL {url!r} must look like mqtt://host:1883 or mqtts://host:8883")
        tls = parts.scheme == "mqtts"
        return cls(
            parts.hostname,
            parts.port or (8883 if tls else 1883),
            tls,
            unquote(parts.username) if parts.username else None,
            unquote(parts.password) if parts.password else None,
        )


def publish_retained(
    url: str,
    topic: str,
    payload: bytes,
    ca_file: str | None = None,
    timeout_s: float = 15.0,
    password: str | None = None,
) -> None:
    """Publish ``payload`` retained at QoS 1 and wait for the broker's PUBACK; raise PublishError otherwise."""
    broker = BrokerUrl.parse(url)
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    if broker.username:
        client.username_pw_set(broker.username, password or broker.password)
    if broker.tls:
        client.tls_set(ca_certs=ca_file, cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    connected, acked = threading.Event(), threading.Event()
    result: dict[str, object] = {}

    def on_connect(
        c: paho.Client, userdata: Any, flags: paho.ConnectFlags, reason_code: ReasonCode, properties: Properties | None
    ) -> None:
        result["connect"] = reason_code
        connected.set()

    def on_publish(c: paho.Client, userdata: Any, mid: int, reason_code: ReasonCode, properties: Properties) -> None:
        result["puback"] = reason_code
        acked.set()

    client.on_connect = on_connect
    client.on_publish = on_publish
    try:
        client.connect(broker.host, broker.port, keepalive=30)
    except OSError as exc:
        raise PublishError(f"cannot reach broker {broker.host}:{broker.port}: {exc}") from exc
    client.loop_start()
    try:
        if not connected.wait(timeout_s):
            raise PublishError(f"no answer from broker {broker.host}:{broker.port} within {timeout_s:.0f} s")
        code = result["connect"]
        if getattr(code, "is_failure", False):
            raise PublishError(f"broker refused the connection: {code}")
        client.publish(topic, payload, qos=1, retain=True)
        if not acked.wait(timeout_s):
            raise PublishError(f"broker did not acknowledge the publish to {topic} within {timeout_s:.0f} s")
        code = result["puback"]
        if getattr(code, "is_failure", False):
            raise PublishError(f"broker refused the publish to {topic}: {code}")
        logger.info("published retained %d bytes to %s", len(payload), topic)
    finally:
        client.disconnect()
        client.loop_stop()


def broker_publisher(url: str, ca_file: str | None = None, password: str | None = None) -> Publisher:
    """A :data:`Publisher` that sends each message with :func:`publish_retained` (one connection each)."""

    def send(topic: str, payload: bytes) -> None:
        publish_retained(url, topic, payload, ca_file=ca_file, password=password)

    return send
