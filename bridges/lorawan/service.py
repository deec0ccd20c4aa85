"""The running bridge: subscriber, converter and publisher wired together, and its health line."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from datetime import datetime

from shared.ids import utcnow

from .config import LorawanConfig
from .convert import Converter
from .transport import Publisher, UplinkSubscriber

logger = logging.getLogger(__name__)

# The counters the health line always shows (others appear once they are non-zero).
HEADLINE = ("uplinks", "converted", "readings", "published", "duplicates", "unknown_device", "unknown_field")


class Bridge:
    def __init__(self, config: LorawanConfig, wall: Callable[[], datetime] = utcnow) -> None:
        self.config = config
        self.converter = Converter(config, wall=wall)
        self._stopping = threading.Event()
        self._checker = threading.Thread(target=self._check_loop, name="lorawan-silence", daemon=True)
        self.counters = self.converter.counters
        host = socket.gethostname()
        self.publisher = Publisher(
            config.cropwatch, config.cropwatch.client_id or f"cropwatch-bridge-lorawan-{host}", self.counters
        )
        self.publisher.on_refused = self._refused
        ns = config.network_server
        self.subscriber = UplinkSubscriber(
            ns, ns.client_id or f"cropwatch-bridge-lorawan-{host}-{id(self):x}", ns.uplink_topic, ns.qos,
            self._on_uplink, self.counters,
        )  # fmt: skip

    def _on_uplink(self, topic: str, payload: bytes) -> None:
        result = self.converter.convert(payload)
        if result is not None:
            out_topic, msg = result
            self.publisher.publish(out_topic, msg.to_json())

    def check_silence(self) -> None:
        """Publish missing flags for devices silent for ``missing_after`` of their uplink intervals."""
        for topic, msg in self.converter.silent():
            self.publisher.publish(topic, msg.to_json())

    def _check_loop(self) -> None:
        while not self._stopping.wait(self.config.bridge.check_every_s):
            try:
                self.check_silence()
            except Exception:
                # A bug here must not end the timer: the next round may well succeed.
                self.counters["callback_errors"] += 1
                logger.exception("the silent-device check failed; carrying on")

    def _refused(self, topic: str, reason: str) -> None:
        self.converter.log.warning(
            "publish_refused", topic,
            "the Cropwatch broker refused telemetry on %s (%s): is the bridge's ACL current? "
            "run `cropwatch bridge lorawan --print-acl`", topic, reason,
        )  # fmt: skip

    def start(self) -> None:
        # Publisher first, so the first uplink has somewhere to go.
        self.publisher.start()
        self.subscriber.start()
        self._checker.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._checker.is_alive():
            self._checker.join()
        self.subscriber.stop()
        self.publisher.stop()

    def ready(self) -> bool:
        return self.publisher.connected.is_set() and self.subscriber.subscribed.is_set()

    def health_line(self, state: str | None = None) -> str:
        parts = [f"{k}={self.counters[k]}" for k in HEADLINE]
        parts += [f"{k}={v}" for k, v in sorted(self.counters.items()) if k not in HEADLINE and v]
        state = state or ("ok" if self.ready() else "not connected")
        return f"lorawan bridge {state}: " + " ".join(parts)

    def run(self, stop: threading.Event) -> int:
        self.start()
        try:
            while not stop.wait(self.config.bridge.log_every_s):
                logger.info("%s", self.health_line())
        finally:
            self.stop()
            logger.info("%s", self.health_line("stopped"))
        return 0
