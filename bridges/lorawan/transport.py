"""MQTT for the LoRaWAN bridge: the only module of ``bridges`` that imports paho.

Two clients, one per broker. The network-server side subscribes (MQTT v5, persistent session
when a client id is configured, so uplinks published while the bridge restarts are kept by that
broker); the Cropwatch side publishes QoS 1 over MQTT v5 and reads each PUBACK's reason code, so a
publish the ACL refuses is counted, not silently lost. paho reconnects both by itself (backoff from
``reconnect_min_s`` to ``reconnect_max_s``) and queues publishes while the Cropwatch broker is away.
Every callback is guarded: an exception is logged and counted, and the bridge carries on.
"""

from __future__ import annotations

import functools
import logging
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from shared.settings import MqttSettings

logger = logging.getLogger(__name__)

# paho leaves Properties.__init__ unannotated; this gives the one call we make a type.
_properties: Callable[[int], Properties] = Properties


def _client(settings: MqttSettings, client_id: str, counters: Counter[str]) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, transport=settings.transport
    )
    client.connect_timeout = settings.connect_timeout_s
    client.reconnect_delay_set(max(1, round(settings.reconnect_min_s)), max(1, round(settings.reconnect_max_s)))
    # Unbounded: while the Cropwatch broker is away, converted telemetry waits here, not dropped.
    client.max_queued_messages_set(0)
    client.max_inflight_messages_set(1000)
    if settings.username:
        password = settings.password.get_secret_value() if settings.password else None
        client.username_pw_set(settings.username, password)
    if settings.tls.enabled:
        tls = settings.tls
        client.tls_set(
            ca_certs=str(tls.ca_file) if tls.ca_file else None,
            certfile=str(tls.cert_file) if tls.cert_file else None,
            keyfile=str(tls.key_file) if tls.key_file else None,
            cert_reqs=ssl.CERT_NONE if tls.insecure_skip_verify else ssl.CERT_REQUIRED,
        )
        if tls.insecure_skip_verify:
            client.tls_insecure_set(True)
    return client


def _guarded(counters: Counter[str], name: str, func: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(func)
    def inner(*args: Any) -> None:
        try:
            func(*args)
        except Exception:
            counters["callback_errors"] += 1
            logger.exception("MQTT %s callback failed; carrying on", name)

    return inner


class Link:
    """One broker connection with connect/reconnect logging and a ``connected`` event."""

    def __init__(self, name: str, settings: MqttSettings, client_id: str, counters: Counter[str]) -> None:
        self.name = name
        self.settings = settings
        self.counters = counters
        self.connected = threading.Event()
        self._stopping = False
        self.client = _client(settings, client_id, counters)
        self.client.on_connect = _guarded(counters, f"{name} connect", self._on_connect)
        self.client.on_disconnect = _guarded(counters, f"{name} disconnect", self._on_disconnect)

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self.counters[f"{self.name}_connect_refused"] += 1
            logger.error("%s broker %s refused the connection: %s", self.name, self.settings.url, reason)
            return
        logger.info("connected to the %s broker %s", self.name, self.settings.url)
        self.connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if self.connected.is_set() and not self._stopping:
            logger.warning("lost the %s broker %s (%s); reconnecting", self.name, self.settings.url, reason)
        self.connected.clear()

    def start(self, clean_start: bool = True, session_expiry_s: int = 0) -> None:
        props = _properties(PacketTypes.CONNECT)
        if session_expiry_s:
            props.SessionExpiryInterval = session_expiry_s
        # connect_async + loop_start: a broker that is down at start is retried, not fatal.
        self.client.connect_async(
            self.settings.host, self.settings.port, self.settings.keepalive_s, clean_start=clean_start, properties=props
        )
        self.client.loop_start()

    def stop(self) -> None:
        self._stopping = True
        self.client.disconnect()
        self.client.loop_stop()


class UplinkSubscriber(Link):
    """The network server's broker: subscribe to uplinks, hand each payload to ``handler``."""

    def __init__(
        self, settings: MqttSettings, client_id: str, topic: str, qos: int,
        handler: Callable[[str, bytes], None], counters: Counter[str],
    ) -> None:  # fmt: skip
        super().__init__("network-server", settings, client_id, counters)
        self.topic, self.qos = topic, qos
        self.subscribed = threading.Event()
        self._handler = handler
        self.client.on_message = _guarded(counters, "message", self._on_message)
        self.client.on_subscribe = _guarded(counters, "subscribe", self._on_subscribe)
        self._persistent = settings.client_id is not None

    def start(self, clean_start: bool = True, session_expiry_s: int = 0) -> None:
        # Only a named client can resume its session, so only then ask the broker to keep it.
        expiry = self.settings.session_expiry_s if self._persistent else 0
        super().start(clean_start=not self._persistent, session_expiry_s=expiry)

    def _on_connect(self, client: mqtt.Client, u: Any, f: Any, reason: Any, p: Any) -> None:
        super()._on_connect(client, u, f, reason, p)
        if not reason.is_failure:
            client.subscribe(self.topic, qos=self.qos)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, reasons: list[Any], _p: Any) -> None:
        if any(r.is_failure for r in reasons):
            self.counters["subscribe_refused"] += 1
            logger.error("the network-server broker refused the subscription to %s: %s", self.topic, reasons)
            return
        logger.info("subscribed to %s", self.topic)
        self.subscribed.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._handler(msg.topic, bytes(msg.payload))


class Publisher(Link):
    """QoS 1 publishes (the bridge's telemetry; the demo's simulated uplinks); a refused PUBACK is counted."""

    def __init__(self, settings: MqttSettings, client_id: str, counters: Counter[str], name: str = "cropwatch") -> None:
        super().__init__(name, settings, client_id, counters)
        self.client.on_publish = _guarded(counters, "publish", self._on_publish)
        self._topics: dict[int, str] = {}
        self._early: dict[int, Any] = {}
        self._lock = threading.Lock()
        self.on_refused: Callable[[str, str], None] | None = None

    def publish(self, topic: str, payload: bytes) -> None:
        # paho calls on_publish holding its own lock, so ours is never held across a paho call (that
        # order inversion deadlocks under load). A PUBACK may therefore arrive before the mid is
        # noted here; _on_publish parks it in _early and this side settles it.
        info = self.client.publish(topic, payload, qos=1)
        with self._lock:
            early = self._early.pop(info.mid, None)
            if early is None:
                self._topics[info.mid] = topic
        if early is not None:
            self._settle(topic, early)

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        with self._lock:
            topic = self._topics.pop(mid, None)
            if topic is None:
                self._early[mid] = reason
                return
        self._settle(topic, reason)

    def pending(self) -> int:
        """Publishes not yet acknowledged (sent or queued)."""
        with self._lock:
            return len(self._topics)

    def stop(self, flush_s: float = 10.0) -> None:
        """Wait (while connected, up to ``flush_s``) for outstanding PUBACKs, then disconnect."""
        deadline = time.monotonic() + flush_s
        while self.pending() and self.connected.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.pending():
            logger.warning("stopping with %d telemetry publishes not acknowledged", self.pending())
        super().stop()

    def _settle(self, topic: str, reason: Any) -> None:
        if reason.is_failure:
            self.counters["publish_refused"] += 1
            if self.on_refused is not None:
                self.on_refused(topic, str(reason))
        else:
            self.counters["published"] += 1
