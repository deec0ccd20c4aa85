"""MQTT v5 transport: the only module of the agent that imports paho.

The interface is small: :meth:`MqttTransport.publish` (with a callback that receives the PUBACK
reason code), :meth:`subscribe`, :meth:`stop`. Reconnection is ours, not paho's, because paho's
backoff has no jitter: a field of devices that lost the same broker would otherwise reconnect in
lock-step. Unacknowledged QoS 1 messages stay in paho's session and are resent (DUP) on reconnect,
in order, before anything newer; the session itself (clean start off, session expiry) keeps the
broker side across reconnects.

Every publish carries the MQTT v5 content type and payload format indicator of its payload
(shared/wire.py). Callers hand over the reference JSON; with ``[uplink] encoding = "cbor"`` this
module turns it into CBOR, the last will and the retained status included. A payload that is already
encoded (a batch from the sender) comes with its content type and is sent as it is.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from shared import wire
from shared.settings import MqttSettings

logger = logging.getLogger(__name__)

AckCallback = Callable[[int], None]
MessageHandler = Callable[[str, bytes, bool], None]
# PUBACK reason codes a broker may answer a publish with (MQTT v5, 3.4.2.1), for logs and events.
REASON_NAMES = {
    0x10: "no matching subscribers",
    0x80: "unspecified error",
    0x83: "implementation specific error",
    0x87: "not authorized",
    0x90: "topic name invalid",
    0x91: "packet identifier in use",
    0x97: "quota exceeded",
    0x99: "payload format invalid",
    0x95: "packet too large",
}


def reason_name(code: int) -> str:
    return REASON_NAMES.get(code, f"reason code {code}")


def backoff_delays(minimum: float, maximum: float, rng: random.Random | None = None) -> Iterator[float]:
    """Exponential backoff with full jitter: uniform in [min, min(max, min * 2^n)]."""
    rng = rng or random.Random()
    ceiling = minimum
    while True:
        yield rng.uniform(minimum, ceiling)
        ceiling = min(maximum, ceiling * 2)


@dataclass
class Will:
    topic: str
    payload: bytes


class MqttTransport:
    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        will: Callable[[], Will] | None = None,
        on_connected: Callable[[bool], None] | None = None,
        on_error: Callable[[str], None] | None = None,
        wire_settings: wire.WireSettings | None = None,
    ) -> None:
        self.settings = settings
        self.wire = wire_settings or wire.WireSettings()
        self.client_id = client_id
        self._will = will
        self._on_connected = on_connected
        self._on_error = on_error or (lambda code: None)
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5,
            transport=settings.transport,
            reconnect_on_failure=False,
        )
        c = self._client
        c.connect_timeout = settings.connect_timeout_s
        c.max_inflight_messages_set(1000)
        c.max_queued_messages_set(0)
        if settings.username:
            password = settings.password.get_secret_value() if settings.password else None
            c.username_pw_set(settings.username, password)
        if settings.tls.enabled:
            c.tls_set(
                ca_certs=str(settings.tls.ca_file) if settings.tls.ca_file else None,
                certfile=str(settings.tls.cert_file) if settings.tls.cert_file else None,
                keyfile=str(settings.tls.key_file) if settings.tls.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
            if settings.tls.insecure_skip_verify:
                c.tls_insecure_set(True)
        c.on_connect = self._guard(self._handle_connect)
        c.on_disconnect = self._guard(self._handle_disconnect)
        c.on_publish = self._guard(self._handle_publish)
        c.on_message = self._guard(self._handle_message)
        c.on_socket_open = self._guard(self._handle_socket_open)
        self._lock = threading.Lock()
        self._acks: dict[int, AckCallback] = {}
        self._early: dict[int, int] = {}
        self._handlers: dict[str, tuple[MessageHandler, bool]] = {}
        self._connected = threading.Event()
        self._lost = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.connects = 0

    # --- callbacks (each wrapped: an exception is logged, counted, survived) --------------

    def _guard(self, fn: Callable[..., None]) -> Callable[..., None]:
        def wrapped(*args: object) -> None:
            try:
                fn(*args)
            except Exception:
                logger.exception("MQTT callback %s failed", fn.__name__)
                self._on_error("mqtt_callback")

        wrapped.__name__ = fn.__name__
        return wrapped

    def _handle_socket_open(self, client: paho.Client, userdata: object, sock: socket.socket) -> None:
        # Small messages should leave now, not wait for Nagle to fill a segment.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _handle_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            logger.error("broker %s refused the connection: %s", self.settings.url, reason_code)
            self._on_error("connect_refused")
            return
        self.connects += 1
        logger.info(
            "connected to %s (session present: %s)", self.settings.url, bool(getattr(flags, "session_present", 0))
        )
        with self._lock:
            handlers = list(self._handlers.items())
        if handlers:
            # One SUBSCRIBE for every filter: a reconnect costs one round trip, however many there are.
            self._client.subscribe([(f, self._options(retained)) for f, (_, retained) in handlers])
        self._connected.set()
        if self._on_connected:
            self._on_connected(bool(getattr(flags, "session_present", 0)))

    def _handle_disconnect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        self._lost.set()
        if was and not self._stopping.is_set():
            logger.warning("disconnected from %s: %s", self.settings.url, reason_code)

    def _handle_publish(
        self, client: paho.Client, userdata: object, mid: int, reason_code: ReasonCode | int, properties: Properties
    ) -> None:
        code = reason_code if isinstance(reason_code, int) else int(reason_code.value)
        with self._lock:
            cb = self._acks.pop(mid, None)
            if cb is None:
                # The PUBACK beat publish() back to our caller; hand it over when the mid is known.
                self._early[mid] = code
                return
        cb(code)

    def _handle_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        with self._lock:
            handlers = list(self._handlers.items())
        for topic_filter, (handler, _) in handlers:
            if paho.topic_matches_sub(topic_filter, message.topic):
                handler(message.topic, bytes(message.payload), bool(message.retain))

    # --- public interface -----------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float | None = None) -> bool:
        return self._connected.wait(timeout)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._supervise, name="mqtt-supervisor", daemon=True)
        self._thread.start()

    def _encoded(
        self, payload: bytes, content_type: str | None, packet: int = PacketTypes.PUBLISH
    ) -> tuple[bytes, Properties]:
        if content_type is None:
            payload, content_type = wire.transcode(payload, self.wire)
        props = Properties(packet)  # type: ignore[no-untyped-call]
        props.ContentType = content_type
        if wire.payload_format(content_type):
            # 0 (bytes) is what an absent indicator means: two bytes saved on every binary publish.
            props.PayloadFormatIndicator = 1
        return payload, props

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        on_ack: AckCallback | None = None,
        content_type: str | None = None,
    ) -> int | None:
        """Queue a publish; ``on_ack`` gets the PUBACK reason code. Returns the mid, or None if offline.

        ``payload`` is a message's reference JSON (encoded here as configured), or an encoded
        payload when ``content_type`` names its form.
        """
        if not self._connected.is_set():
            return None
        payload, props = self._encoded(payload, content_type)
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            logger.warning("publish to %s failed locally: %s", topic, paho.error_string(info.rc))
            return None
        if on_ack is not None:
            with self._lock:
                early = self._early.pop(info.mid, None)
                if early is None:
                    self._acks[info.mid] = on_ack
            if early is not None:
                on_ack(early)
        return info.mid

    def subscribe(self, topic_filter: str, handler: MessageHandler, retained: bool = False) -> None:
        """Subscribe at QoS 1; with ``retained`` False the broker is asked not to send retained messages."""
        with self._lock:
            self._handlers[topic_filter] = (handler, retained)
        if self._connected.is_set():
            self._subscribe_now(topic_filter, retained)

    @staticmethod
    def _options(retained: bool) -> SubscribeOptions:
        return SubscribeOptions(qos=1, retainHandling=0 if retained else 2)

    def _subscribe_now(self, topic_filter: str, retained: bool) -> None:
        self._client.subscribe(topic_filter, options=self._options(retained))

    def stop(self, last: tuple[str, bytes] | None = None, timeout: float = 3.0) -> None:
        """Publish ``last`` (retained, QoS 1) if connected, then disconnect cleanly."""
        if last is not None and self._connected.is_set():
            done = threading.Event()
            if self.publish(last[0], last[1], qos=1, retain=True, on_ack=lambda code: done.set()) is not None:
                done.wait(timeout)
        self._stopping.set()
        self._lost.set()
        try:
            self._client.disconnect()
        except Exception:  # disconnect on a dead socket must not stop the shutdown
            logger.debug("disconnect failed", exc_info=True)
        if self._thread is not None:
            self._thread.join(timeout)
        self._client.loop_stop()

    # --- connection supervision -----------------------------------------------------------

    def _connect_once(self, first: bool) -> None:
        if self._will is not None:
            will = self._will()
            payload, props = self._encoded(will.payload, None, PacketTypes.WILLMESSAGE)
            self._client.will_set(will.topic, payload, qos=1, retain=True, properties=props)
        if first:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self.settings.session_expiry_s
            self._client.connect(
                self.settings.host,
                self.settings.port,
                keepalive=self.settings.keepalive_s,
                clean_start=False,
                properties=props,
            )
        else:
            self._client.reconnect()

    def _supervise(self) -> None:
        delays = backoff_delays(self.settings.reconnect_min_s, self.settings.reconnect_max_s)
        first = True
        while not self._stopping.is_set():
            self._lost.clear()
            connects_before = self.connects
            try:
                self._connect_once(first)
                first = False
            except (OSError, ssl.SSLError) as exc:
                delay = next(delays)
                logger.warning("cannot reach broker %s (%s); retrying in %.1f s", self.settings.url, exc, delay)
                self._stopping.wait(delay)
                continue
            except Exception:
                delay = next(delays)
                logger.exception("connecting to %s failed; retrying in %.1f s", self.settings.url, delay)
                self._stopping.wait(delay)
                continue
            self._client.loop_start()
            # paho's network thread ends on its own when the link fails without a disconnect
            # callback (a refused CONNACK); the check every few seconds catches that case.
            while not self._lost.wait(5.0):
                if getattr(self._client, "_thread", True) is None:
                    break
            self._client.loop_stop()
            self._connected.clear()
            if self._stopping.is_set():
                break
            if self.connects > connects_before:
                delays = backoff_delays(self.settings.reconnect_min_s, self.settings.reconnect_max_s)
            delay = next(delays)
            logger.info("reconnecting to %s in %.1f s", self.settings.url, delay)
            self._stopping.wait(delay)
