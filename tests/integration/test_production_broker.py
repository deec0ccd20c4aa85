"""The shipped production Mosquitto config in a real mosquitto: TLS enforced, per-device ACL matrix."""

from __future__ import annotations

import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from farm_monitor import devices_cli
from farm_monitor.provision import INGEST_USER, OPS_USER, Pki
from tests.services import free_port, missing_service, mosquitto_binary, port_open, run_as_me, wait_for

REPO = Path(__file__).resolve().parents[2]
NOT_AUTHORISED = 135


@dataclass
class ProdBroker:
    device_port: int
    cloud_port: int
    pki: Path
    devices: Path


@pytest.fixture(scope="module")
def prod_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProdBroker]:
    binary = mosquitto_binary()
    if binary is None:
        missing_service("the mosquitto binary")
    work = tmp_path_factory.mktemp("prod-broker")
    pki, devices = work / "pki", work / "devices"
    base = ["--pki", str(pki)]
    assert devices_cli.main([*base, "server-cert", "localhost", "127.0.0.1"]) == 0
    for farm, device in (("farm-a", "dev-a"), ("farm-a", "dev-b"), ("farm-b", "dev-a")):
        args = ["provision", device, "--farm", farm, "--out", str(devices), "--broker-host", "localhost"]
        assert devices_cli.main([*base, *args]) == 0
    (work / "ingest.pw").write_text("ingest-pw\n")
    assert devices_cli.main([*base, "service-password", INGEST_USER, "--password-file", str(work / "ingest.pw")]) == 0
    (work / "ops.pw").write_text("ops-pw\n")
    assert devices_cli.main([*base, "service-password", OPS_USER, "--password-file", str(work / "ops.pw")]) == 0

    device_port, cloud_port = free_port(), free_port()
    conf = (REPO / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    conf = (
        conf.replace("/etc/mosquitto/cropwatch/", f"{pki}/")
        .replace("/var/lib/mosquitto/", f"{work}/")
        .replace("listener 8883", f"listener {device_port} 127.0.0.1")
        .replace("listener 8884", f"listener {cloud_port} 127.0.0.1")
        .replace("log_dest syslog", f"log_dest file {work}/mosquitto.log")
    )
    (work / "mosquitto.conf").write_text(conf + "\n".join(run_as_me()) + "\n")
    proc = subprocess.Popen([binary, "-c", str(work / "mosquitto.conf")], stderr=subprocess.PIPE)
    try:
        wait_for(
            lambda: (
                (port_open("127.0.0.1", device_port) and port_open("127.0.0.1", cloud_port)) or proc.poll() is not None
            ),
            what="production mosquitto to listen",
        )
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        yield ProdBroker(device_port, cloud_port, pki, devices)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class Session:
    def __init__(self, client: mqtt.Client, connack: list) -> None:
        self.client, self.connack = client, connack
        self.suback: dict[int, list[int]] = {}
        self.puback: dict[int, int] = {}
        self.received: list[mqtt.MQTTMessage] = []
        self.connected = threading.Event()

        def on_connect(_c: object, _u: object, _f: object, rc: object, _p: object) -> None:
            connack.append(rc)
            if not rc.is_failure:  # type: ignore[attr-defined]
                self.connected.set()

        client.on_connect = on_connect
        client.on_disconnect = lambda *_a: self.connected.clear()
        client.on_subscribe = lambda _c, _u, mid, rcs, _p: self.suback.__setitem__(mid, [rc.value for rc in rcs])
        client.on_publish = lambda _c, _u, mid, rc, _p: self.puback.__setitem__(mid, rc.value)
        client.on_message = lambda _c, _u, msg: self.received.append(msg)

    def subscribe(self, topic: str) -> int:
        wait_for(self.connected.is_set, what="connection")
        _, mid = self.client.subscribe(topic, qos=1)
        wait_for(lambda: mid in self.suback, what=f"SUBACK for {topic}")
        return self.suback[mid][0]

    def publish(self, topic: str, payload: bytes = b"{}") -> int:
        # Mosquitto 2.0.11 drops a TLS connection right after refusing a QoS 1 publish with
        # PUBACK 135; paho reconnects by itself, so each check waits for the connection first.
        wait_for(self.connected.is_set, what="connection")
        info = self.client.publish(topic, payload, qos=1)
        wait_for(lambda: info.mid in self.puback, what=f"PUBACK for {topic}")
        return self.puback[info.mid]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def connect(
    port: int,
    pki: Path,
    username: str | None,
    password: str | None,
    cert_dir: Path | None = None,
    tls: bool = True,
) -> Session:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{username}-{free_port()}", protocol=mqtt.MQTTv5)
    if tls:
        cert = (str(cert_dir / "client.crt"), str(cert_dir / "client.key")) if cert_dir else (None, None)
        client.tls_set(ca_certs=str(pki / "ca.crt"), certfile=cert[0], keyfile=cert[1], cert_reqs=ssl.CERT_REQUIRED)
    if username:
        client.username_pw_set(username, password)
    connack: list = []
    session = Session(client, connack)
    client.connect("localhost" if tls else "127.0.0.1", port)
    client.loop_start()
    return session


def device(broker: ProdBroker, identity: str, password: str | None = None, with_cert: bool = True) -> Session:
    folder = broker.devices / identity
    pw = password if password is not None else (folder / "mqtt.password").read_text().strip()
    return connect(broker.device_port, broker.pki, identity, pw, folder if with_cert else None)


def test_device_publishes_only_as_itself(prod_broker: ProdBroker) -> None:
    a = device(prod_broker, "farm-a.dev-a")
    try:
        assert a.publish("cropwatch/v1/farm-a/dev-a/detection") < 128
        assert a.publish("cropwatch/v1/farm-a/dev-a/status") < 128
        # not as another device of its farm or of another farm, not a command, not the fleet model
        assert a.publish("cropwatch/v1/farm-a/dev-b/detection") == NOT_AUTHORISED
        assert a.publish("cropwatch/v1/farm-b/dev-a/detection") == NOT_AUTHORISED
        assert a.publish("cropwatch/v1/farm-a/dev-b/cmd/ping") == NOT_AUTHORISED
        assert a.publish("cropwatch/v1/farm-a/dev-a/cmd/ping") == NOT_AUTHORISED
        assert a.publish("cropwatch/v1/farm-a/_fleet/model/leaf") == NOT_AUTHORISED
        assert a.publish("cropwatch/v1/farm-a/_fleet/shadow/leaf") == NOT_AUTHORISED
    finally:
        a.close()


def test_device_reads_only_its_own_commands_and_its_farms_fleet(prod_broker: ProdBroker) -> None:
    # Mosquitto 2.0 may grant a SUBACK for a filter the ACL does not allow; what matters is that
    # nothing is delivered through it, which is what this checks.
    a, b = device(prod_broker, "farm-a.dev-a"), device(prod_broker, "farm-a.dev-b")
    ops = connect(prod_broker.cloud_port, prod_broker.pki, OPS_USER, "ops-pw")
    try:
        for topic in ("#", "cropwatch/v1/+/+/+", "cropwatch/v1/+/+/cmd/+", "cropwatch/v1/+/_fleet/model/+"):
            a.subscribe(topic)
        assert b.subscribe("cropwatch/v1/farm-a/dev-b/cmd/+") == 1
        assert a.subscribe("cropwatch/v1/farm-a/dev-a/cmd/+") == 1
        assert ops.publish("cropwatch/v1/farm-a/dev-b/cmd/ping", b"for-b") < 128
        assert ops.publish("cropwatch/v1/farm-b/_fleet/model/leaf", b"farm-b-model") < 128
        assert ops.publish("cropwatch/v1/farm-a/_fleet/model/leaf", b"farm-a-model") < 128
        assert ops.publish("cropwatch/v1/farm-a/_fleet/shadow/leaf", b"farm-a-shadow") < 128
        assert ops.publish("cropwatch/v1/farm-a/dev-a/cmd/ping", b"for-a") < 128
        assert b.publish("cropwatch/v1/farm-a/dev-b/telemetry", b"b-telemetry") < 128
        wait_for(lambda: any(m.payload == b"for-b" for m in b.received), what="b's command to reach b")
        wait_for(lambda: any(m.payload == b"for-a" for m in a.received), what="a's command to reach a")
        wait_for(lambda: any(m.payload == b"farm-a-model" for m in a.received), what="farm-a fleet model")
        wait_for(lambda: any(m.payload == b"farm-a-shadow" for m in a.received), what="farm-a shadow model")
        got = {m.payload for m in a.received}
        assert got == {b"for-a", b"farm-a-model", b"farm-a-shadow"}, got
    finally:
        for s in (a, b, ops):
            s.close()


def test_cloud_ingest_reads_the_device_tree_on_a_shared_subscription(prod_broker: ProdBroker) -> None:
    ingest = connect(prod_broker.cloud_port, prod_broker.pki, INGEST_USER, "ingest-pw")
    wait_for(lambda: ingest.connack, what="CONNACK")
    assert not ingest.connack[0].is_failure
    a = device(prod_broker, "farm-a.dev-a")
    try:
        assert ingest.subscribe("$share/ingest/cropwatch/v1/+/+/+") == 1
        assert a.publish("cropwatch/v1/farm-a/dev-a/telemetry", b'{"x": 1}') < 128
        wait_for(lambda: any(m.topic.endswith("dev-a/telemetry") for m in ingest.received), what="ingest to receive")
        assert ingest.publish("cropwatch/v1/farm-a/dev-a/detection") == NOT_AUTHORISED  # read-only
    finally:
        a.close()
        ingest.close()


def test_wrong_password_is_refused(prod_broker: ProdBroker) -> None:
    s = device(prod_broker, "farm-a.dev-a", password="not-the-password")
    wait_for(lambda: s.connack, what="CONNACK")
    assert s.connack[0].is_failure
    s.close()


def test_anonymous_is_refused(prod_broker: ProdBroker) -> None:
    s = connect(prod_broker.cloud_port, prod_broker.pki, None, None)
    wait_for(lambda: s.connack, what="CONNACK")
    assert s.connack[0].is_failure
    s.close()


def test_device_port_requires_a_client_certificate(prod_broker: ProdBroker) -> None:
    folder = prod_broker.devices / "farm-a.dev-a"
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="no-cert", protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=str(prod_broker.pki / "ca.crt"), cert_reqs=ssl.CERT_REQUIRED)
    client.username_pw_set("farm-a.dev-a", (folder / "mqtt.password").read_text().strip())
    connacks: list = []
    dropped = threading.Event()
    client.on_connect = lambda _c, _u, _f, rc, _p: connacks.append(rc)
    client.on_disconnect = lambda *_a: dropped.set()
    try:
        client.connect("localhost", prod_broker.device_port)
    except (ssl.SSLError, OSError):
        return  # refused during the handshake (TLS 1.2)
    client.loop_start()
    # TLS 1.3 reports the missing certificate after the handshake: the first read fails.
    wait_for(dropped.is_set, what="the broker to drop a client without a certificate")
    client.loop_stop()
    assert not [rc for rc in connacks if not rc.is_failure]


def test_plaintext_mqtt_is_not_served(prod_broker: ProdBroker) -> None:
    got: list = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="plain", protocol=mqtt.MQTTv5)
    client.on_connect = lambda *a: got.append(a)
    done = threading.Event()
    client.on_disconnect = lambda *_a: done.set()
    client.connect("127.0.0.1", prod_broker.cloud_port)
    client.loop_start()
    wait_for(done.is_set, what="the broker to drop a plaintext client")
    client.loop_stop()
    assert not got


def test_generated_acl_and_passwords_cover_every_device(prod_broker: ProdBroker) -> None:
    acl = (prod_broker.pki / "mosquitto.acl").read_text()
    users = [line.split(":")[0] for line in (prod_broker.pki / "mosquitto.passwd").read_text().splitlines()]
    for identity in ("farm-a.dev-a", "farm-a.dev-b", "farm-b.dev-a"):
        assert f"user {identity}\n" in acl
        assert identity in users
    assert (prod_broker.pki / "ca.key").stat().st_mode & 0o777 == 0o600
    assert len(Pki(prod_broker.pki).devices()) == 3


def test_provisioned_agent_config_connects_over_tls_and_reports_online(prod_broker: ProdBroker, tmp_path: Path) -> None:
    """The folder `devices provision` writes is all a device needs: a real agent process connects with it."""
    import json
    import signal

    from tests.services import cropwatch_cmd, cropwatch_env

    folder = prod_broker.devices / "farm-a.dev-b"
    ops = connect(prod_broker.cloud_port, prod_broker.pki, OPS_USER, "ops-pw")
    env = cropwatch_env(CROPWATCH_MQTT__PORT=str(prod_broker.device_port), CROPWATCH_DATA_DIR=str(tmp_path / "state"))
    check = subprocess.run(
        cropwatch_cmd("agent", "--config", str(folder / "agent.toml"), "--check-config"),
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    assert (folder / "mqtt.password").read_text().strip() not in check.stdout + check.stderr
    agent = subprocess.Popen(
        cropwatch_cmd("agent", "--config", str(folder / "agent.toml")), env=env, stderr=subprocess.PIPE
    )
    try:
        assert ops.subscribe("cropwatch/v1/farm-a/dev-b/status") == 1

        def online() -> bool:
            return any(json.loads(m.payload).get("state") == "online" for m in ops.received)

        wait_for(lambda: online() or agent.poll() is not None, timeout=30, what="the agent's online status")
        assert agent.poll() is None, agent.stderr.read().decode()[-2000:] if agent.stderr else ""
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=30)
        ops.close()
