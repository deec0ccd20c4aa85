"""LoRaWAN bridge throughput: ChirpStack uplinks in, Cropwatch telemetry out, through real Mosquittos.

Two private Mosquittos stand for the network server's broker and the Cropwatch broker. N ChirpStack
v4 ``up`` events (the demo's simulated soil probe, 4 mapped fields each, spread over D devices) are
published at QoS 1 into a persistent session the consumer registered beforehand, so each consumer
drains the same backlog alone, without a publisher competing for the CPUs. A QoS 1 subscriber on
the Cropwatch broker counts what arrives; the rate is N over the time from the consumer's start to
the last arrival.

* ``baseline``: a plain paho subscriber that republishes each payload unchanged to a Cropwatch
  topic (no parsing, no mapping, no validation): what the brokers and paho allow;
* ``bridge``: the LoRaWAN bridge (``bridges.lorawan.service.Bridge``) as ``cropwatch bridge lorawan``
  runs it: parse, map, convert units, derive the msg_id, build and validate Telemetry, publish.

    python bench/lorawan.py --uplinks 20000 --devices 50
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

from bridges.lorawan.config import UPLINK_TOPICS, LorawanConfig  # noqa: E402
from bridges.lorawan.service import Bridge  # noqa: E402
from bridges.lorawan.simulate import SOIL_PROBE_FIELDS, SoilProbe, uplink_topic  # noqa: E402

OUT_FILTER = "cropwatch/v1/+/+/telemetry"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def mosquitto(workdir: Path) -> Iterator[int]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nmax_inflight_messages 1000\n"
        # Started as root, Mosquitto drops to the `mosquitto` user, which cannot read a private temp folder.
        + ("user root\n" if os.geteuid() == 0 else "")
    )
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            break
        if time.monotonic() > deadline:
            raise RuntimeError("mosquitto did not start")
        time.sleep(0.02)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def client(client_id: str, port: int, clean_start: bool = True) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    c.connect("127.0.0.1", port, clean_start=clean_start, properties=props)
    return c


def register_session(port: int, client_id: str) -> None:
    """Subscribe once with a persistent session and leave: the broker keeps the backlog for it."""
    c = client(client_id, port, clean_start=False)
    done = threading.Event()
    c.on_subscribe = lambda *_a: done.set()
    c.loop_start()
    c.subscribe(UPLINK_TOPICS["chirpstack"], qos=1)
    if not done.wait(10):
        raise RuntimeError("no SUBACK")
    c.disconnect()
    c.loop_stop()


def publish_backlog(port: int, uplinks: list[tuple[str, bytes]]) -> None:
    c = client("bench-network-server", port)
    c.loop_start()
    infos = [c.publish(topic, payload, qos=1) for topic, payload in uplinks]
    for info in infos:
        info.wait_for_publish(60)
    c.disconnect()
    c.loop_stop()


class Arrivals:
    """A QoS 1 subscriber on the Cropwatch broker counting telemetry as it arrives."""

    def __init__(self, port: int) -> None:
        self.count = 0
        self.last = 0.0
        self.all_in = threading.Event()
        self.expected = 0
        self.client = client(f"bench-counter-{free_port()}", port)
        ready = threading.Event()
        self.client.on_subscribe = lambda *_a: ready.set()
        self.client.on_message = self._on_message
        self.client.loop_start()
        self.client.subscribe(OUT_FILTER, qos=1)
        if not ready.wait(10):
            raise RuntimeError("no SUBACK")

    def _on_message(self, _c: object, _u: object, _m: object) -> None:
        self.count += 1
        self.last = time.perf_counter()
        if self.count >= self.expected:
            self.all_in.set()

    def expect(self, n: int) -> None:
        self.count, self.expected = 0, n
        self.all_in.clear()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run_baseline(ns_port: int, cw_port: int, arrivals: Arrivals, n: int, timeout: float) -> float:
    out = client("bench-baseline-out", cw_port)
    out.loop_start()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-baseline", protocol=mqtt.MQTTv5)
    sub.max_inflight_messages_set(1000)

    def relay(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        device = msg.topic.split("/")[3]
        out.publish(f"cropwatch/v1/bench/{device}/telemetry", msg.payload, qos=1)

    sub.on_message = relay
    arrivals.expect(n)
    started = time.perf_counter()
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    sub.connect("127.0.0.1", ns_port, clean_start=False, properties=props)
    sub.loop_start()
    if not arrivals.all_in.wait(timeout):
        raise RuntimeError(f"baseline: {arrivals.count} of {n} arrived")
    elapsed = arrivals.last - started
    sub.disconnect()
    sub.loop_stop()
    out.disconnect()
    out.loop_stop()
    return elapsed


def run_bridge(
    ns_port: int, cw_port: int, arrivals: Arrivals, n: int, devices: list[str], timeout: float
) -> tuple[Bridge, float]:
    """The bridge drains the backlog; returns it (for its counters) and the seconds to the last arrival."""
    cfg = LorawanConfig.model_validate(
        {
            "network_server": {"format": "chirpstack", "port": ns_port, "client_id": "bench-bridge"},
            "cropwatch": {"port": cw_port},
            "bridge": {"log_every_s": 3600},
            "models": {"soil-probe": {"fields": SOIL_PROBE_FIELDS, "ignore": ["Mod"]}},
            "devices": [
                {"dev_eui": eui, "farm": "bench", "device": f"lora-{i:04d}", "model": "soil-probe"}
                for i, eui in enumerate(devices)
            ],
        }
    )
    bridge = Bridge(cfg)
    arrivals.expect(n)
    started = time.perf_counter()
    bridge.start()
    if not arrivals.all_in.wait(timeout):
        bridge.stop()
        raise RuntimeError(f"bridge: {arrivals.count} of {n} arrived; counters {dict(bridge.counters)}")
    bridge.stop()
    return bridge, arrivals.last - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uplinks", type=int, default=20000)
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    euis = [f"a8404100{i:08x}" for i in range(args.devices)]
    probes = [SoilProbe(eui, seed=i) for i, eui in enumerate(euis)]
    uplinks = [(uplink_topic(p.dev_eui), p.payload()) for _ in range(args.uplinks // len(probes)) for p in probes]
    n = len(uplinks)
    readings_per_uplink = len(SOIL_PROBE_FIELDS)
    with tempfile.TemporaryDirectory() as tmp, mosquitto(Path(tmp) / "ns") as ns, mosquitto(Path(tmp) / "cw") as cw:
        arrivals = Arrivals(cw)
        register_session(ns, "bench-baseline")
        publish_backlog(ns, uplinks)
        base = run_baseline(ns, cw, arrivals, n, args.timeout)
        register_session(ns, "bench-bridge")
        publish_backlog(ns, uplinks)
        bridge, elapsed = run_bridge(ns, cw, arrivals, n, euis, args.timeout)
        arrivals.close()
    c = bridge.counters
    print(f"{n} ChirpStack uplinks, {args.devices} devices, {readings_per_uplink} readings each, QoS 1 both sides")
    print(f"baseline (paho relay, no validation): {n / base:8.0f} uplinks/s")
    print(
        f"bridge:                               {n / elapsed:8.0f} uplinks/s  {n * readings_per_uplink / elapsed:8.0f} "
        f"readings/s  ({base / elapsed:.2f} of the baseline)"
    )
    print(f"bridge counters: converted={c['converted']} published={c['published']} readings={c['readings']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
