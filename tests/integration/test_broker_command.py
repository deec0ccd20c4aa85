"""`cropwatch broker`: the embedded broker persists sessions, and refuses a port that is taken."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.services import cropwatch_cmd, cropwatch_env, free_port, mosquitto_binary, port_open, wait_for


def start_broker(port: int, data_dir: Path, engine: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        cropwatch_cmd("broker", "--port", str(port), "--data-dir", str(data_dir), "--engine", engine),
        env=cropwatch_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    wait_for(lambda: port_open("127.0.0.1", port) or proc.poll() is not None, timeout=30, what="broker port")
    assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
    return proc


def stop(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    return out.decode()


def connect(port: int, client_id: str, protocol: int, clean: bool) -> tuple[mqtt.Client, list[bytes]]:
    got: list[bytes] = []
    kwargs = {"clean_session": clean} if protocol != mqtt.MQTTv5 else {}
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol, **kwargs)
    c.username_pw_set("tester")  # amqtt keeps sessions of named clients only
    ready = threading.Event()
    c.on_connect = lambda *_a: ready.set()
    c.on_message = lambda _c, _u, msg: got.append(msg.payload)
    c.connect("127.0.0.1", port)
    c.loop_start()
    wait_for(ready.is_set, what=f"{client_id} connected")
    return c, got


def test_amqtt_engine_keeps_retained_messages_and_sessions_across_restart(tmp_path: Path) -> None:
    pytest.importorskip("amqtt")
    port, data = free_port(), tmp_path / "broker"
    proc = start_broker(port, data, "amqtt")
    try:
        sub, _ = connect(port, "persistent-sub", mqtt.MQTTv311, clean=False)
        done = threading.Event()
        sub.on_subscribe = lambda *_a: done.set()
        sub.subscribe("cropwatch/v1/farm/gw/event", qos=1)
        wait_for(done.is_set, what="SUBACK")
        sub.loop_stop()
        sub.disconnect()

        pub, _ = connect(port, "pub", mqtt.MQTTv311, clean=True)
        pub.publish("cropwatch/v1/farm/gw/status", b"retained-status", qos=1, retain=True).wait_for_publish(10)
        pub.loop_stop()
        pub.disconnect()
    finally:
        stop(proc)

    proc = start_broker(port, data, "amqtt")
    try:
        late, got = connect(port, "late", mqtt.MQTTv311, clean=True)
        late.subscribe("cropwatch/v1/farm/gw/status", qos=1)
        wait_for(lambda: b"retained-status" in got, what="the retained message after a restart")
        late.loop_stop()
        late.disconnect()
        # The persistent subscriber's subscription survived the restart: a message published
        # while it is away reaches it when it comes back with the same client id.
        pub, _ = connect(port, "pub2", mqtt.MQTTv311, clean=True)
        sub, got = connect(port, "persistent-sub", mqtt.MQTTv311, clean=False)
        pub.publish("cropwatch/v1/farm/gw/event", b"after-restart", qos=1).wait_for_publish(10)
        wait_for(lambda: b"after-restart" in got, what="delivery on the restored subscription")
        for c in (pub, sub):
            c.loop_stop()
            c.disconnect()
    finally:
        stop(proc)


def test_mosquitto_engine_speaks_mqtt_v5(tmp_path: Path) -> None:
    if mosquitto_binary() is None:
        pytest.skip("mosquitto binary not installed")
    port = free_port()
    proc = start_broker(port, tmp_path / "broker", "mosquitto")
    try:
        c, got = connect(port, "v5-client", mqtt.MQTTv5, clean=True)
        done = threading.Event()
        c.on_subscribe = lambda *_a: done.set()
        c.subscribe("cropwatch/v1/farm/gw/+", qos=1)
        wait_for(done.is_set, what="SUBACK")
        c.publish("cropwatch/v1/farm/gw/event", b"hello-v5", qos=1).wait_for_publish(10)
        wait_for(lambda: b"hello-v5" in got, what="v5 round trip")
        c.loop_stop()
        c.disconnect()
    finally:
        stop(proc)
    assert (tmp_path / "broker" / "mosquitto.conf").read_text().count("max_queued_messages 0") == 1


@pytest.mark.parametrize("engine", ["amqtt", "mosquitto"])
def test_taken_port_is_reported_and_exits_non_zero(tmp_path: Path, engine: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run(
            cropwatch_cmd("broker", "--port", str(port), "--data-dir", str(tmp_path), "--engine", engine),
            env=cropwatch_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
