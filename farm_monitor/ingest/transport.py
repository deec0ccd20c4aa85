"""MQTT v5 transport of the ingest service: the only farm_monitor module that imports paho.

* persistent session (clean start off, session expiry from ``mqtt.session_expiry_s``), so
  messages published while ingest is down or restarting are kept and redelivered;
* manual acknowledgement: a PUBACK goes out only when :meth:`MqttTransport.ack` is called,
  which ingest does after the batch holding the message is committed;
* MQTT v5 Receive Maximum bounds what the broker sends before we acknowledge (backpressure);
* optional shared subscription ``$share/GROUP/...`` so N ingest processes split the load;
* reconnect with exponential backoff (``mqtt.reconnect_min_s`` .. ``reconnect_max_s``); the
  subscription is renewed on every connect, and every callback is wrapped so an exception is
  logged, counted and survived.
"""

from __future__ import annotations

import functools
import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from shared.settings import MqttSettings
from shared.topics import shared_subscription

from .metrics import Metrics

logger = logging.getLogger(__name__)

# (topic, payload, mid, qos, connection generation, content type or None)
MessageHandler = Callable[[str, bytes, int, int, int, str | None], None]


class Transport(Protocol):
    """What ingest needs from a transport."""

    def subscribe(self, handler: MessageHandler) -> None: ...
    def poll(self, timeout: float) -> None: ...
    def ack(self, items: list[tuple[Any, ...]]) -> None: ...
    def pause(self) -> None: ...
    def stop(self) -> None: ...


_U16 = struct.Struct("!H")
# paho leaves Properties.__init__ unannotated; this gives the one call we make a type.
_properties: Callable[[int], Properties] = Properties
_PUBACK = struct.Struct("!BBH")
_PUBACK_BYTE = 0x40


class _IngestClient(mqtt.Client):
    """paho's client with a lean receive path and batched acknowledgements.

    paho builds an ``MQTTMessage`` and decodes MQTT v5 properties for every PUBLISH, which
    costs more than validating and storing the message. Ingest needs only topic, payload,
    packet id and QoS, so QoS 0/1 PUBLISH packets are decoded here (properties skipped: ingest
    announces no topic aliases, so none can arrive) and handed to ``fast_deliver``. The PUBACKs
    of a committed batch go out as one write. Both use paho 2.x internals (``_handle_publish``,
    ``_in_packet``, ``_packet_queue``); the tests exercise them against a real Mosquitto, and
    paho is pinned below 3.
    """

    fast_deliver: Callable[[bytes, bytes, int, int, str | None], None] | None = None
    _rbuf: bytes = b""
    _rpos: int = 0

    def _sock_recv(self, bufsize: int) -> bytes:
        # paho reads a packet in 3-4 recv() calls (type byte, length bytes, body); one large
        # recv() serves many packets instead.
        if self._rpos >= len(self._rbuf):
            data = super()._sock_recv(max(bufsize, 262_144))
            if len(data) <= bufsize:
                return data
            self._rbuf, self._rpos = data, 0
        end = self._rpos + bufsize
        out = self._rbuf[self._rpos : end]
        self._rpos = min(end, len(self._rbuf))
        return out

    def buffered(self) -> bool:
        return self._rpos < len(self._rbuf)

    def _sock_close(self) -> None:
        self._rbuf, self._rpos = b"", 0
        super()._sock_close()

    def _handle_publish(self) -> MQTTErrorCode:
        header = self._in_packet["command"]
        qos = (header & 0x06) >> 1
        deliver = self.fast_deliver
        if deliver is None or qos == 2 or self._protocol != mqtt.MQTTv5:
            return super()._handle_publish()
        packet = self._in_packet["packet"]
        try:
            (topic_len,) = _U16.unpack_from(packet, 0)
            pos = 2 + topic_len
            topic = bytes(packet[2:pos])
            mid = 0
            if qos:
                (mid,) = _U16.unpack_from(packet, pos)
                pos += 2
            props_len, pos = _varint(packet, pos)
            end = pos + props_len
            content_type = _content_type(packet, pos, end) if props_len else None
            pos = end
        except (struct.error, IndexError):
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        deliver(topic, bytes(packet[pos:]), mid, qos, content_type)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def ack_many(self, mids: list[int]) -> None:
        if mids:
            data = b"".join([_PUBACK.pack(_PUBACK_BYTE, 2, mid) for mid in mids])
            self._packet_queue(_PUBACK_BYTE, data, 0, 0)


def _varint(packet: bytes | bytearray, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = packet[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


# Sizes of the fixed-size PUBLISH properties (MQTT v5 3.3.2.3); the others are strings or varints.
_FIXED_PROPS = {0x01: 1, 0x02: 4, 0x23: 2}
_STRING_PROPS = (0x03, 0x08, 0x09)  # content type, response topic, correlation data: 2-byte length
_CONTENT_TYPE, _USER_PROPERTY, _SUBSCRIPTION_ID = 0x03, 0x26, 0x0B


def _content_type(packet: bytes | bytearray, pos: int, end: int) -> str | None:
    """The Content Type property of a PUBLISH's property block, if it has one."""
    while pos < end:
        ident = packet[pos]
        pos += 1
        if ident in _FIXED_PROPS:
            pos += _FIXED_PROPS[ident]
        elif ident in _STRING_PROPS:
            (n,) = _U16.unpack_from(packet, pos)
            if ident == _CONTENT_TYPE:
                return bytes(packet[pos + 2 : pos + 2 + n]).decode("utf-8", "replace")
            pos += 2 + n
        elif ident == _USER_PROPERTY:
            for _ in range(2):
                (n,) = _U16.unpack_from(packet, pos)
                pos += 2 + n
        elif ident == _SUBSCRIPTION_ID:
            _, pos = _varint(packet, pos)
        else:
            raise IndexError(f"unknown PUBLISH property {ident:#x}")
    return None


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
        max_burst: int = 1000,
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
        self._received = 0
        self.max_burst = max_burst
        self._delay = settings.reconnect_min_s
        self._next_attempt = 0.0
        self.client = _IngestClient(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            transport=settings.transport,
            manual_ack=True,
        )
        self.client.connect_timeout = settings.connect_timeout_s
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
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.fast_deliver = self._on_publish

    # --- interface -------------------------------------------------------------------------------

    def subscribe(self, handler: MessageHandler) -> None:
        """Deliver every message to ``handler`` from :meth:`poll`; connects on the first poll."""
        self._handler = handler
        props = _properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.settings.session_expiry_s
        props.ReceiveMaximum = self.receive_maximum
        logger.info("connecting to %s as %s, subscribing to %s", self.settings.url, self.client_id, self.topic)
        self.client.connect_async(
            self.settings.host, self.settings.port, self.settings.keepalive_s, clean_start=False, properties=props
        )

    def poll(self, timeout: float) -> None:
        """Run the network for up to ``timeout`` seconds: read what arrived, send acks, keep alive.

        Ingest drives the network from its own thread instead of paho's background thread: with
        two threads the one doing I/O waits for the GIL after every recv (a convoy that halves the
        rate), and acknowledging from the writing thread needs no locks.
        """
        if self.client.socket() is None:
            self._maybe_reconnect(timeout)
            return
        rc = self.client.loop(timeout)
        # paho reads one packet per select(); drain whatever is already buffered without selecting.
        for _ in range(self.max_burst):
            if rc != mqtt.MQTT_ERR_SUCCESS:
                break
            before = self._received
            rc = self.client.loop_read()
            if self._received == before and not self.client.buffered():
                break
        if rc != mqtt.MQTT_ERR_SUCCESS and self.client.socket() is None and self._accepting:
            self._schedule_reconnect()

    def _schedule_reconnect(self) -> None:
        self._next_attempt = time.monotonic() + self._delay
        logger.info("reconnecting in %.1f s", self._delay)
        self._delay = min(self._delay * 2, self.settings.reconnect_max_s)

    def _maybe_reconnect(self, timeout: float) -> None:
        wait = self._next_attempt - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, timeout))
            return
        try:
            self.client.reconnect()
        except (OSError, mqtt.WebsocketConnectionError) as exc:
            self.metrics.inc("cropwatch_ingest_connect_failures_total")
            logger.warning("cannot reach broker %s: %s", self.settings.url, exc)
            self._schedule_reconnect()

    def ack(self, items: list[tuple[Any, ...]]) -> None:
        """Send the PUBACKs for committed messages received on the current connection.

        A message from an earlier connection is not acknowledged: its packet id belongs to that
        connection, and the broker redelivers it on this one (a duplicate the database ignores).
        """
        with self._lock:
            generation = self._generation
        mids = [item[2] for item in items if item[3] == 1 and item[4] == generation]
        if self.client.socket() is not None:
            self.client.ack_many(mids)

    def pause(self) -> None:
        """Stop taking messages (before a shutdown flush); new arrivals stay unacknowledged."""
        self._accepting = False

    def stop(self, timeout: float = 5.0) -> None:
        """Disconnect after the queued PUBACKs; the session stays on the broker for the next start."""
        self._accepting = False
        if self.client.socket() is None:
            return
        self.client.disconnect()
        deadline = time.monotonic() + timeout
        while self.client.socket() is not None and time.monotonic() < deadline:
            self.client.loop(0.05)

    # --- paho callbacks --------------------------------------------------------------------------

    @_guarded("connect")
    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self.metrics.inc("cropwatch_ingest_connect_failures_total")
            logger.error("broker %s refused the connection: %s", self.settings.url, reason)
            return
        with self._lock:
            self._generation += 1
        self._delay = self.settings.reconnect_min_s
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
    def _on_publish(self, topic: bytes, payload: bytes, mid: int, qos: int, content_type: str | None = None) -> None:
        if not self._accepting or self._handler is None:
            return
        self._received += 1
        self._handler(topic.decode("utf-8", "replace"), payload, mid, qos, self._generation, content_type)

    @_guarded("message")
    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if not self._accepting or self._handler is None:
            return
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = msg._topic.decode("utf-8", "replace")
        self._received += 1
        content_type = getattr(msg.properties, "ContentType", None) if msg.properties is not None else None
        self._handler(topic, bytes(msg.payload), msg.mid, msg.qos, self._generation, content_type)
