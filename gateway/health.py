"""The gateway's health reporter: uplink state, bridge backlog and disk, as ``gateway_status`` messages;
and the farm's new labels as ``label`` messages (:mod:`gateway.labels`).

It reads what Mosquitto itself publishes on the gateway broker: the bridge notification
``$SYS/broker/connection/{bridge}/state`` (retained, 1 or 0) and the message store size
``$SYS/broker/store/messages/{count,bytes}``. Its reports go to the local broker like any device
message, so the local ingest stores them and the bridge takes them up (queued during an outage:
the cloud then sees the whole outage's history when the link returns).

This is the only module of the gateway that imports paho.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from shared import SCHEMA_VERSION, __version__ as VERSION
from shared.ids import new_msg_id, utcnow
from shared.messages import GatewayStatus
from shared.topics import device_topic

from .config import GatewayConfig
from .labels import LabelUplink

logger = logging.getLogger(__name__)


class HealthState:
    """What the $SYS topics said so far (thread-safe: paho's thread writes, the timer reads)."""

    def __init__(self, clock: Callable[[], datetime] = utcnow) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.uplink: Literal["up", "down", "unknown"] = "unknown"
        self.uplink_since: datetime | None = None
        self.queued_messages: int | None = None
        self.queued_bytes: int | None = None
        self.errors = 0

    def on_sys(self, topic: str, payload: bytes) -> None:
        text = payload.decode("ascii", "replace").strip()
        with self._lock:
            if topic.endswith("/state"):
                state: Literal["up", "down", "unknown"] = "up" if text == "1" else "down" if text == "0" else "unknown"
                if state != self.uplink:
                    self.uplink, self.uplink_since = state, self._clock()
            elif topic.endswith("/store/messages/count") and text.isdigit():
                self.queued_messages = int(text)
            elif topic.endswith("/store/messages/bytes") and text.isdigit():
                self.queued_bytes = int(text)

    def report(self, cfg: GatewayConfig) -> GatewayStatus:
        free: int | None = None
        total: int | None = None
        try:
            disk = shutil.disk_usage(cfg.disk_path)
            free, total = disk.free, disk.total
        except OSError:
            logger.warning("cannot read disk usage of %s", cfg.disk_path)
        with self._lock:
            return GatewayStatus(
                schema_version=SCHEMA_VERSION,
                msg_id=new_msg_id(),
                observed_at=self._clock(),
                farm_id=cfg.farm_id,
                device_id=cfg.gateway_id,
                bridge=cfg.bridge,
                uplink=self.uplink,
                uplink_since=self.uplink_since,
                backlog_since=self.uplink_since if self.uplink == "down" else None,
                queued_bytes=self.queued_bytes,
                queued_messages=self.queued_messages,
                disk_free_bytes=free,
                disk_total_bytes=total,
                gateway_version=VERSION,
            )


def sys_topics(bridge: str) -> list[str]:
    return [
        f"$SYS/broker/connection/{bridge}/state",
        "$SYS/broker/store/messages/count",
        "$SYS/broker/store/messages/bytes",
    ]


class HealthReporter:
    def __init__(self, cfg: GatewayConfig) -> None:
        self.cfg = cfg
        self.state = HealthState()
        self.topic = device_topic(cfg.farm_id, cfg.gateway_id, "gateway_status")
        self.sent = 0
        self.labels_sent = 0
        self.labels = (
            LabelUplink(cfg.labels_database, cfg.farm_id, cfg.gateway_id, cfg.labels_cursor_file)
            if cfg.labels_database
            else None
        )
        s = cfg.mqtt
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id or f"gateway-health-{cfg.farm_id}",
            protocol=paho.MQTTv5,
        )
        if s.username:
            self.client.username_pw_set(s.username, s.password.get_secret_value() if s.password else None)
        if s.tls.enabled:
            self.client.tls_set(ca_certs=str(s.tls.ca_file) if s.tls.ca_file else None)
        self.client.reconnect_delay_set(int(s.reconnect_min_s) or 1, int(s.reconnect_max_s))
        self.client.on_connect = self._guard(self._on_connect)
        self.client.on_message = self._guard(self._on_message)

    def _guard(self, fn: Callable[..., None]) -> Callable[..., None]:
        def wrapped(*args: Any) -> None:
            try:
                fn(*args)
            except Exception:
                self.state.errors += 1
                logger.exception("error in MQTT callback %s", fn.__name__)

        return wrapped

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            logger.warning("gateway broker refused the connection: %s", reason)
            return
        client.subscribe([(t, 0) for t in sys_topics(self.cfg.bridge)])

    def _on_message(self, _c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        self.state.on_sys(message.topic, bytes(message.payload))

    def publish_once(self) -> GatewayStatus:
        status = self.state.report(self.cfg)
        info = self.client.publish(self.topic, status.to_json(), qos=1)
        if info.rc == paho.MQTT_ERR_SUCCESS:
            self.sent += 1
        else:
            logger.warning("gateway_status not handed to the broker: %s", paho.error_string(info.rc))
        return status

    def send_labels(self) -> int:
        """New farm labels to the gateway broker, each acknowledged before the cursor moves past it."""
        if self.labels is None or not self.client.is_connected():
            return 0
        sent = 0
        for label in self.labels.pending():
            info = self.client.publish(self.labels.topic, label.to_json(), qos=1)
            info.wait_for_publish(timeout=10)
            if not info.is_published():
                logger.warning("label %s not acknowledged by the gateway broker; retrying later", label.msg_id)
                break
            self.labels.advance(label.msg_id)
            sent += 1
        return sent

    def run(self, stop: threading.Event) -> int:
        s = self.cfg.mqtt
        self.client.connect_async(s.host, s.port, keepalive=s.keepalive_s)
        self.client.loop_start()
        try:
            # The first report waits a moment for the retained $SYS values; later ones every interval.
            stop.wait(min(2.0, self.cfg.interval_s))
            while not stop.is_set():
                try:
                    self.publish_once()
                except Exception:
                    logger.exception("building or sending gateway_status failed")
                try:
                    self.labels_sent += self.send_labels()
                except Exception:
                    logger.exception("sending the farm's labels failed")
                stop.wait(self.cfg.interval_s)
        finally:
            self.client.disconnect()
            self.client.loop_stop()
            if self.labels is not None:
                self.labels.close()
        return 0
