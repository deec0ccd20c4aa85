"""``cropwatch demo``: the demo farm on one machine, on embedded defaults.

It runs the parts of Cropwatch that exist in this version and says which ones do not yet:
a broker (the one given by --broker, else an embedded one on a free port), a simulated field
device that publishes one message of every kind over MQTT v5 at QoS 1, and a cloud-side
subscriber that validates each one with the shared schemas and prints what arrived.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

logger = logging.getLogger(__name__)

FARM_ID = "demo-farm"
DEVICES = ("gw-north", "gw-south", "gw-orchard")
NOT_YET = {
    "cropwatch agent": "field agent with ONNX inference and outbox",
    "cropwatch ingest": "MQTT to database",
    "cropwatch monitor": "Streamlit farm monitor on http://localhost:8501",
    "cropwatch train / export": "disease and yield models",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_port(host: str, port: int, deadline_s: float) -> bool:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def _start_broker(data_dir: Path) -> tuple[subprocess.Popen[bytes], str, int]:
    port = _free_port()
    cmd = [sys.executable, "-m", "shared.cli", "broker", "--port", str(port), "--data-dir", str(data_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if not _wait_port("127.0.0.1", port, 20):
        proc.kill()
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise RuntimeError(f"the embedded broker did not start: {err}")
    return proc, "127.0.0.1", port


def run(host: str, port: int, rounds: int) -> int:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from rich.console import Console
    from rich.table import Table

    from shared import messages as m
    from shared import topics
    from shared.examples import example_messages

    console = Console()
    counts: dict[str, int] = {}
    rejected: list[str] = []
    lock = threading.Lock()

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            t = topics.parse_topic(msg.topic)
            m.parse_device_message(msg.payload, expected_kind=t.kind)
        except (ValueError, m.MessageError) as exc:
            rejected.append(f"{msg.topic}: {exc}")
            return
        with lock:
            counts[t.kind or "?"] = counts.get(t.kind or "?", 0) + 1

    def connect(client_id: str) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        ready = threading.Event()
        c.on_connect = lambda *_a: ready.set()
        c.connect(host, port)
        c.loop_start()
        if not ready.wait(10):
            raise RuntimeError(f"could not connect to the broker at {host}:{port} with MQTT v5")
        return c

    cloud = connect("demo-cloud")
    cloud.on_message = on_message
    subscribed = threading.Event()
    cloud.on_subscribe = lambda *_a: subscribed.set()
    cloud.subscribe(topics.device_filter(FARM_ID), qos=1)
    subscribed.wait(10)

    sent = 0
    with console.status("simulated devices publishing") as status:
        devices = {d: connect(f"demo-{d}") for d in DEVICES}
        for r in range(rounds):
            for device, client in devices.items():
                for kind, msg in example_messages(FARM_ID, device, fixed=False).items():
                    if kind not in m.DEVICE_KINDS:
                        continue
                    info = client.publish(topics.device_topic(FARM_ID, device, kind), msg.to_json(), qos=1)
                    info.wait_for_publish(10)
                    sent += 1
            status.update(f"round {r + 1}/{rounds}: {sent} messages published")
        deadline = time.monotonic() + 10
        while sum(counts.values()) + len(rejected) < sent and time.monotonic() < deadline:
            time.sleep(0.05)
        for client in [*devices.values(), cloud]:
            client.loop_stop()
            client.disconnect()

    table = Table(title=f"demo farm '{FARM_ID}': messages validated by the cloud side")
    table.add_column("kind")
    table.add_column("received", justify="right")
    for kind in m.DEVICE_KINDS:
        table.add_row(kind, str(counts.get(kind, 0)))
    console.print(table)
    console.print(f"sent {sent}, received {sum(counts.values())}, rejected {len(rejected)} over MQTT v5 at QoS 1")
    console.print("[bold]Not in this version yet[/bold] (later releases add them to the demo):")
    for cmd, what in NOT_YET.items():
        console.print(f"  {cmd:<26} {what}")
    return 0 if sum(counts.values()) == sent and not rejected else 1


def main(argv: list[str], prog: str = "cropwatch demo") -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--broker", help="use this broker (mqtt://host:port) instead of starting one")
    parser.add_argument("--rounds", type=int, default=3, help="messages of each kind per device")
    parser.add_argument("--data-dir", type=Path, default=Path("var/demo"), help="where the demo keeps its state")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    broker_proc = None
    if args.broker:
        url = urlparse(args.broker)
        host, port = url.hostname or "127.0.0.1", url.port or 1883
    else:
        if not (shutil.which("mosquitto") or os.path.exists("/usr/sbin/mosquitto")):
            print(
                f"{prog}: needs MQTT v5; install mosquitto (apt-get install mosquitto) or pass --broker",
                file=sys.stderr,
            )
            return 1
        args.data_dir.mkdir(parents=True, exist_ok=True)
        broker_dir = Path(tempfile.mkdtemp(prefix="broker-", dir=args.data_dir))
        broker_proc, host, port = _start_broker(broker_dir)
        print(f"embedded broker on mqtt://{host}:{port}")
    try:
        return run(host, port, args.rounds)
    except KeyboardInterrupt:
        return 130
    finally:
        if broker_proc is not None:
            broker_proc.send_signal(signal.SIGTERM)
            try:
                broker_proc.wait(10)
            except subprocess.TimeoutExpired:
                broker_proc.kill()
