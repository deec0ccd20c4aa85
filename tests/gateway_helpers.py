"""A farm gateway on one machine for the outage tests and bench/gateway_outage.py.

A cloud Mosquitto (a TLS listener for the bridge, a plain one for the cloud's own clients), the
gateway Mosquitto started from the files ``cropwatch gateway init`` wrote, a TCP proxy between the
bridge and the cloud's TLS port (closing it cuts the uplink while both brokers stay up), and
agent-shaped devices: the real agent outbox, sender and MQTT transport, fed with example messages.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from pydantic import SecretStr

from edge_agent.outbox import Outbox, OutMessage
from edge_agent.pipeline import Identity
from edge_agent.sender import Sender
from edge_agent.transport import MqttTransport
from shared.examples import example_messages
from shared.ids import new_msg_id
from shared.settings import MqttSettings, TlsSettings
from shared.topics import device_topic
from tests.services import free_port, mosquitto_binary, port_open, run_as_me


class Proxy:
    """TCP relay from ``port`` to ``target``; ``cut`` drops every connection and refuses new ones."""

    def __init__(self, target: int, port: int | None = None) -> None:
        self.target = target
        self.port = port or free_port()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._server: socket.socket | None = None

    def open(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(16)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        if self._server is not None:
            # shutdown wakes the thread blocked in accept(); close alone leaves the port listening.
            with contextlib.suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
            self._server = None
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


@dataclass
class GatewayBroker:
    """Mosquitto run from the generated mosquitto.conf (plus ``user root`` when the tests run as root)."""

    conf: Path
    port: int
    log: Path
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = mosquitto_binary()
        assert binary
        run_conf = self.conf.with_name("mosquitto.run.conf")
        run_conf.write_text(self.conf.read_text() + "\n".join(run_as_me()) + "\n")
        self.proc = subprocess.Popen(
            [binary, "-c", str(run_conf)], stdout=subprocess.DEVNULL, stderr=self.log.open("ab")
        )
        deadline = time.monotonic() + 10
        while not port_open(self.host, self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gateway mosquitto did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@dataclass
class Device:
    """One agent-shaped device: the real outbox, sender and transport; records commands and models."""

    farm_id: str
    device_id: str
    folder: Path
    broker_port: int
    sent: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    models: list[tuple[str, bool]] = field(default_factory=list)

    credentials: Path | None = None  # a `cropwatch devices provision` folder: TLS, certificate, password

    def start(self) -> None:
        settings = MqttSettings(host="127.0.0.1", port=self.broker_port, reconnect_min_s=0.2, reconnect_max_s=1.0)
        if self.credentials is not None:
            c = self.credentials
            settings = settings.model_copy(
                update={
                    "username": f"{self.farm_id}.{self.device_id}",
                    "password": SecretStr((c / "mqtt.password").read_text().strip()),
                    "tls": TlsSettings(enabled=True, ca_file=c / "ca.crt", cert_file=c / "client.crt",
                                       key_file=c / "client.key"),
                }
            )  # fmt: skip
        self.transport = MqttTransport(settings, client_id=f"{self.farm_id}.{self.device_id}")
        self.outbox = Outbox(self.folder / f"{self.device_id}.outbox.db", budget_bytes=64 << 20)
        self.sender = Sender(self.outbox, self.transport, Identity(self.farm_id, self.device_id))
        base = f"cropwatch/v1/{self.farm_id}"
        self.transport.subscribe(f"{base}/{self.device_id}/cmd/+", self._on_command)
        self.transport.subscribe(f"{base}/_fleet/model/+", self._on_model, retained=True)
        self.transport.start()
        self.sender.start()

    def _on_command(self, topic: str, payload: bytes, retained: bool) -> None:
        self.commands.append(payload.decode())

    def _on_model(self, topic: str, payload: bytes, retained: bool) -> None:
        self.models.append((payload.decode(), retained))

    def produce(self, n: int) -> None:
        """n messages (detection, telemetry, event in turn), each with a fresh msg_id, into the outbox."""
        examples = example_messages(self.farm_id, self.device_id, fixed=False)
        out = []
        for i in range(n):
            kind = ("detection", "telemetry", "event")[i % 3]
            msg = examples[kind].model_copy(update={"msg_id": new_msg_id()})
            out.append(OutMessage(msg.msg_id, kind, device_topic(self.farm_id, self.device_id, kind), msg.to_json()))
        self.outbox.add(out)
        self.sent += [m.msg_id for m in out]

    def produce_sample(self) -> str:
        """One ``sample`` message (an image for labelling) into the outbox; returns its msg_id."""
        msg = example_messages(self.farm_id, self.device_id, fixed=False)["sample"]
        self.outbox.add([OutMessage(msg.msg_id, "sample", device_topic(self.farm_id, self.device_id, "sample"),
                                    msg.to_json())])  # fmt: skip
        self.sent.append(msg.msg_id)
        return msg.msg_id

    def pending(self) -> int:
        return int(self.outbox.stats().get("depth") or 0)

    def stop(self) -> None:
        self.sender.stop()
        self.transport.stop()
        self.outbox.close()


class Tap:
    """Counts every delivery of each msg_id on the cloud broker (duplicates the bridge let through)."""

    def __init__(self, port: int, farm_id: str) -> None:
        self.counts: Counter[str] = Counter()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"tap-{os.getpid()}", protocol=mqtt.MQTTv5
        )
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe(f"cropwatch/v1/{farm_id}/+/+", qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        import json

        with contextlib.suppress(ValueError, KeyError):
            self.counts[json.loads(message.payload)["msg_id"]] += 1

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish_cloud(port: int, items: list[tuple[str, bytes, bool]]) -> None:
    """Publish (topic, payload, retain) at QoS 1 on the cloud broker, in order, each acknowledged."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ops-{new_msg_id()}", protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for topic, payload, retain in items:
            client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def table(rows: list[dict[str, object]]) -> str:
    heads = list(rows[0])
    widths = [max(len(h), *(len(str(r[h])) for r in rows)) for h in heads]
    lines = [" | ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(str(r[h]).ljust(w) for h, w in zip(heads, widths, strict=True)) for r in rows]
    return "\n".join(lines)
