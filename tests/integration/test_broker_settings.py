"""The shipped Mosquitto settings keep QoS 1 messages that Mosquitto's defaults drop."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from farm_monitor.config import MonitorConfig
from shared.config import load_config
from tests.integration.ingest_helpers import make_messages, publish_all
from tests.services import Broker, free_port, mosquitto_binary, port_open, wait_for

REPO = Path(__file__).resolve().parents[2]
SNIPPET_DIR = REPO / "deploy" / "mosquitto" / "conf.d"


def _start(workdir: Path, extra: list[str]) -> tuple[subprocess.Popen[bytes], Broker]:
    binary = mosquitto_binary()
    if binary is None:
        pytest.skip("mosquitto binary not installed")
    workdir.mkdir(parents=True)
    port = free_port()
    conf = workdir / "mosquitto.conf"
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", f"persistence_location {workdir}/", *extra]
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: port_open("127.0.0.1", port) or proc.poll() is not None, timeout=10)
    assert proc.poll() is None, "mosquitto did not start with this config"
    return proc, Broker("127.0.0.1", port, workdir)


def _poll(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


def _queued_then_received(broker: Broker, n: int) -> int:
    """Subscribe persistently, go away, have n messages published, come back: how many arrive?"""
    got: list[str] = []
    subscribed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="slow-ingest", protocol=mqtt.MQTTv5)
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_message = lambda c, u, msg: got.append(msg.topic)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 600
    client.connect(broker.host, broker.port, clean_start=False, properties=props)
    client.loop_start()
    client.subscribe("cropwatch/v1/+/+/+", qos=1)
    assert subscribed.wait(10)
    client.disconnect()
    client.loop_stop()
    publish_all(broker, [(t, p) for t, p, _ in make_messages(n, seed=51)])
    client.connect(broker.host, broker.port, clean_start=False, properties=props)
    client.loop_start()
    marker = make_messages(1, farm_id="marker-farm", seed=52)
    try:
        # The drops happen at publish time; whatever the broker kept is delivered before a marker
        # published now (one queue, in order). A marker that meets a still-full queue is itself
        # dropped, so publish markers until one arrives.
        wait_for(lambda: len(got) >= min(n, 1000), timeout=30, what="queued messages")
        for _ in range(50):
            publish_all(broker, [(t, p) for t, p, _ in marker])
            if _poll(lambda: any(t.startswith("cropwatch/v1/marker-farm/") for t in got), 1.0):
                break
        else:
            pytest.fail("no marker message arrived after the backlog")
        return sum(1 for t in got if not t.startswith("cropwatch/v1/marker-farm/"))
    finally:
        client.disconnect()
        client.loop_stop()


def test_shipped_queue_settings_keep_what_the_defaults_drop(tmp_path):
    n = 1500
    proc, broker = _start(tmp_path / "defaults", ["persistence true"])
    try:
        assert _queued_then_received(broker, n) < n  # Mosquitto's max_queued_messages 1000 drops silently
    finally:
        proc.terminate()
        proc.wait(10)
    proc, broker = _start(tmp_path / "shipped", ["persistence true", f"include_dir {SNIPPET_DIR}"])
    try:
        assert _queued_then_received(broker, n) == n
    finally:
        proc.terminate()
        proc.wait(10)


def test_shipped_monitor_config_is_valid(tmp_path):
    secret = tmp_path / "pg.password"
    secret.write_text("pw\n")
    text = (
        (REPO / "deploy" / "compose" / "monitor.toml")
        .read_text()
        .replace("/run/secrets/postgres_password", str(secret))
    )
    (tmp_path / "monitor.toml").write_text(text)
    cfg = load_config(MonitorConfig, tmp_path / "monitor.toml", environ={})
    assert cfg.retention.days["telemetry"] == 400 and cfg.retention.days["samples"] == 90
    assert cfg.ingest.shared_group == "ingest" and cfg.database.password.get_secret_value() == "pw"


def test_the_queue_snippet_agrees_with_the_production_broker_config():
    def settings(path: Path) -> dict[str, str]:
        out = {}
        for line in path.read_text().splitlines():
            parts = line.split("#", 1)[0].split()
            if len(parts) >= 2:
                out[parts[0]] = " ".join(parts[1:])
        return out

    snippet = settings(SNIPPET_DIR / "cropwatch-queues.conf")
    production = settings(REPO / "deploy" / "mosquitto" / "mosquitto.conf")
    assert snippet["max_queued_messages"] == "0"
    for key in ("max_queued_messages", "max_queued_bytes", "max_packet_size", "persistent_client_expiration"):
        assert snippet[key] == production[key], key
