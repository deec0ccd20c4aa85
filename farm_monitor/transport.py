"""MQTT v5 transport of the ingest service: the only farm_monitor module that imports paho.

* persistent session (clean start off, session expiry from ``mqtt.session_expiry_s``), so
  messages published while ingest is down or restarting are kept and redelivered;
* manual acknowledgement: a PUBACK goes out only when :meth:`MqttTransport.ack` is called,
  which ingest does after the batch holding the message is committed;
* MQTT v5 Receive Maximum bounds what the broker sends before we acknowledge (backpressure);
* optional shared subscription ``$share/GROUP/...`` so N ingest processes split the load;
* paho's automatic reconnect with exponential backoff; the subscription is renewed on every
  connect, and every callback is wrapped so an exception is logged, counted and survived.
"""

from __future__ import annotations

import functools
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from shared.settings import MqttSettings
from shared.topics import shared_subscription

from .metrics import Metrics

logger = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes, int, int, int], None]


class Transport(Protocol):
    """What ingest needs from a transport."""

    def subscribe(self, handler: MessageHandler) -> None: ...
    def ack(self, items: list[tuple]) -> None: ...
    def pause(self) -> None: ...
    def stop(self) -> None: ...


def _guarded(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def inner(self: MqttTransport, *args: Any) -> Any:
            try:
                return func(self, *args)
            except Exception:
                self.metrics.inc("cropwatch_ingest_callback_errors_total", callback=name)
                logger.exception("MQTT %s callback failed; carrying on", name)
                return None

        return inner

    return wrap


class MqttTransport:
    def __init__(
        self,
        settings: MqttSettings,
        topic_filter: str,
        metrics: Metrics,
        client_id: str | None = None,
        shared_group: str | None = None,
        receive_maximum: int = 8000,
        qos: int = 1,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.qos = qos
        self.client_id = settings.client_id or client_id or f"cropwatch-ingest-{socket.gethostname()}"
        self.topic = shared_subscription(shared_group, topic_filter) if shared_group else topic_filter
        self.receive_maximum = receive_maximum
        self._handler: MessageHandler | None = None
        self._generation = 0
        self._accepting = True
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            transport=settings.transport,
            manual_ack=True,
        )
        if settings.username:
            password = settings.password.get_secret_value() if settings.password else None
            self.client.username_pw_set(settings.username, password)
        if settings.tls.enabled:
            tls = settings.tls
            self.client.tls_set(
                ca_certs=str(tls.ca_file) if tls.ca_file else None,
                certfile=str(tls.cert_file) if tls.cert_file else None,
                keyfile=str(tls.key_file) if tls.key_file else None,
                cert_reqs=ssl.CERT_NONE if tls.insecure_skip_verify else ssl.CERT_REQUIRED,
            )
            if tls.insecure_skip_verify:
                self.client.tls_insecure_set(True)
        self.client.reconnect_delay_set(
            max(1, round(settings.reconnect_min_s)), max(1, round(settings.reconnect_max_s))
        )
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    # --- interface -------------------------------------------------------------------------------

    def subscribe(self, handler: MessageHandler) -> None:
        """Connect (retrying in the background) and deliver every message to ``handler``."""
        self._handler = handler
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.settings.session_expiry_s
        props.ReceiveMaximum = self.receive_maximum
        logger.info("connecting to %s as %s, subscribing to %s", self.settings.url, self.client_id, self.topic)
        self.client.connect_async(
            self.settings.host, self.settings.port, self.settings.keepalive_s, clean_start=False, properties=props
        )
        self.client.loop_start()

    def ack(self, items: list[tuple]) -> None:
        """Send the PUBACKs for committed messages received on the current connection.

        A message from an earlier connection is not acknowledged: its packet id belongs to that
        connection, and the broker redelivers it on this one (a duplicate the database ignores).
        """
        with self._lock:
            generation = self._generation
        for item in items:
            mid, qos, gen = item[2], item[3], item[4]
            if qos and gen == generation:
                self.client.ack(mid, qos)

    def pause(self) -> None:
        """Stop taking messages (before a shutdown flush); new arrivals stay unacknowledged."""
        self._accepting = False

    def stop(self) -> None:
        """Disconnect after the queued PUBACKs; the session stays on the broker for the next start."""
        self._accepting = False
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()

    # --- paho callbacks --------------------------------------------------------------------------

    @_guarded("connect")
    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self.metrics.inc("cropwatch_ingest_connect_failures_total")
            logger.error("broker %s refused the connection: %s", self.settings.url, reason)
            return
        with self._lock:
            self._generation += 1
        self.metrics.inc("cropwatch_ingest_connects_total")
        self.metrics.set("cropwatch_ingest_mqtt_connected", 1)
        logger.info("connected to %s (session present: %s)", self.settings.url, flags.session_present)
        # Renewed on every connect: harmless with a kept session, needed when the broker lost it.
        client.subscribe(self.topic, qos=self.qos)
        self.connected.set()

    @_guarded("disconnect")
    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self.connected.clear()
        self.subscribed.clear()
        self.metrics.set("cropwatch_ingest_mqtt_connected", 0)
        if self._accepting:
            self.metrics.inc("cropwatch_ingest_disconnects_total")
            logger.warning("disconnected from %s (%s); reconnecting with backoff", self.settings.url, reason)

    @_guarded("subscribe")
    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, reasons: list[Any], _props: Any) -> None:
        failed = [rc for rc in reasons if rc.is_failure]
        if failed:
            self.metrics.inc("cropwatch_ingest_subscribe_failures_total")
            logger.error("broker refused the subscription to %s: %s", self.topic, failed[0])
            return
        self.subscribed.set()
        logger.info("subscribed to %s", self.topic)

    @_guarded("message")
    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if not self._accepting or self._handler is None:
            return
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = msg._topic.decode("utf-8", "replace")
        self._handler(topic, msg.payload, msg.mid, msg.qos, self._generation)
