"""Bytes a device sends in a day, per wire mode, counted at the broker (issue 21, docs/uplink.md).

One simulated day of one device goes through a private Mosquitto, once per mode: 100 photos
classified between 06:00 and 18:00 (one detection each), telemetry every 5 minutes (four sensors),
a status heartbeat every 60 s (the agent's defaults), 5 low-confidence samples (a 256x192 JPEG of
about 11 KB) and 4 events. The device is the agent's own publish path: the SQLite outbox, the
sender and the MQTT v5 transport, with the outbox and sender on a simulated clock (so a batch's
delay is simulated time) and the network real. A listening subscriber sums topic plus payload of
every PUBLISH the broker hands on (the issue's measure), and also the MQTT bytes (fixed header,
packet id, properties, and the PUBACK back to the device), and decodes every payload to check that
every detection arrived.

Modes: ``json`` (today's agent), ``cbor`` (CBOR, uncompressed, one message per PUBLISH),
``compact`` (CBOR compressed with the shipped zstd dictionary, one message per PUBLISH),
``compact+batch`` (the same, up to 50 messages of a kind per PUBLISH, waiting at most 15 minutes). The
``budget`` hook: a :class:`Mode` may reshape the day (status on change, telemetry aggregated per
hour) and gate the outbox; see ``MODES`` below.

    python bench/uplink.py [--modes json,cbor,compact,compact+batch] [--photos 100] [--batch-delay 900]
"""

from __future__ import annotations

import argparse
import contextlib
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from tqdm import tqdm  # noqa: E402

from edge_agent.outbox import Outbox  # noqa: E402
from edge_agent.pipeline import Identity, to_out  # noqa: E402
from edge_agent.sender import Sender  # noqa: E402
from edge_agent.transport import MqttTransport  # noqa: E402
from shared import messages as m, wire  # noqa: E402
from shared.examples import EXAMPLE_SHA, tiny_jpeg  # noqa: E402
from shared.settings import MqttSettings  # noqa: E402

FARM = "bench-farm"
DAY0 = datetime(2026, 6, 14, tzinfo=UTC)
LABELS = ("Tomato___healthy", "Tomato___Late_blight", "Tomato___Septoria_leaf_spot")


@dataclass
class Day:
    """What the device makes in one day: messages per minute, and the minutes it sends a status."""

    messages: dict[int, list[m.Envelope]] = field(default_factory=lambda: defaultdict(list))
    status_minutes: list[int] = field(default_factory=list)


@dataclass
class Mode:
    name: str
    wire: wire.WireSettings
    # The budget mode (issue 21 items 2-4) plugs in here: reshape the day (status on change plus a
    # keep-alive, telemetry aggregated per hour) and/or wrap the outbox with its byte-budget gate.
    shape_day: Callable[[Day], Day] | None = None
    make_outbox: Callable[[Path, Callable[[], float]], Outbox] | None = None


MODES = {
    "json": Mode("json", wire.WireSettings()),
    "cbor": Mode("cbor", wire.WireSettings(encoding="cbor", compress=False)),
    "compact": Mode("compact", wire.WireSettings(encoding="cbor")),
    # A detection may wait 15 minutes for company: a leaf disease spreads over days, and the farmer
    # reads the monitor a few times a day.
    "compact+batch": Mode(
        "compact+batch", wire.WireSettings(encoding="cbor", batch_max_messages=50, batch_max_delay_s=900)
    ),
}


# --- the simulated day ------------------------------------------------------------------------


def model_ref() -> m.ModelRef:
    return m.ModelRef(name="leaf-disease", version="1.2.0", sha256=EXAMPLE_SHA)


def at(minute: int, second: float = 0.0) -> datetime:
    return DAY0 + timedelta(minutes=minute, seconds=second)


def detection(device: str, minute: int, rng: random.Random) -> m.Detection:
    probs = sorted((rng.random() for _ in LABELS), reverse=True)
    total = sum(probs)
    labels = rng.sample(LABELS, len(LABELS))
    top = [m.LabelScore(label=lab, probability=round(p / total, 4)) for lab, p in zip(labels, probs, strict=True)]
    stamp = at(minute, rng.uniform(0, 59))
    return m.Detection(
        farm_id=FARM, device_id=device, observed_at=stamp, model=model_ref(), source="cam-north",
        image_ref=f"cam-north/{stamp:%Y-%m-%dT%H%M%S}Z.jpg", field_id="north-field", top_k=top,
        inference_ms=round(rng.uniform(35, 60), 1),
    )  # fmt: skip


def telemetry(device: str, minute: int, rng: random.Random) -> m.Telemetry:
    hour = minute / 60
    readings = [
        ("soil-1", "soil_moisture", 0.31 - hour * 0.002 + rng.gauss(0, 0.002), "m3/m3"),
        ("air-1", "air_temperature", 14 + 10 * max(0.0, 1 - abs(hour - 14) / 8) + rng.gauss(0, 0.2), "degC"),
        ("air-1", "relative_humidity", 85 - 30 * max(0.0, 1 - abs(hour - 14) / 8) + rng.gauss(0, 1), "%"),
        ("leaf-1", "leaf_wetness", max(0.0, min(1.0, 0.8 - hour * 0.05 + rng.gauss(0, 0.05))), "1"),
    ]
    return m.Telemetry(
        farm_id=FARM, device_id=device, observed_at=at(minute), field_id="north-field",
        readings=[m.SensorReading(sensor=s, quantity=q, value=round(v, 3), unit=u) for s, q, v, u in readings],
    )  # fmt: skip


def sample(device: str, det: m.Detection, seed: int) -> m.Sample:
    return m.Sample(
        farm_id=FARM, device_id=device, observed_at=det.observed_at, reason="low_confidence", model=det.model,
        detection_msg_id=det.msg_id, field_id=det.field_id, source=det.source, image_ref=det.image_ref,
        predicted_label=det.label, confidence=det.confidence, width=256, height=192,
        image_jpeg=tiny_jpeg(256, 192, seed=seed),
    )  # fmt: skip


def status(device: str, minute: int, rng: random.Random) -> m.Status:
    health = m.Health(
        uptime_s=minute * 60.0 + 3600, cpu_percent=round(rng.uniform(1, 6), 1),
        memory_rss_mb=round(rng.uniform(90, 110), 1), disk_free_mb=12000.0 - minute * 0.1,
        temperature_c=round(rng.uniform(40, 55), 1), inference_p50_ms=42.0, inference_p95_ms=57.0,
    )  # fmt: skip
    active = m.ActiveModel(name="leaf-disease", version="1.2.0", sha256=EXAMPLE_SHA)
    return m.Status(
        farm_id=FARM, device_id=device, observed_at=at(minute), state="online", since=DAY0 - timedelta(hours=1),
        agent_version="0.1.0", models=[active], health=health,
    )  # fmt: skip


def make_day(device: str, photos: int, seed: int = 21) -> Day:
    rng = random.Random(seed)
    day = Day(status_minutes=list(range(0, 1440)))
    photo_minutes = sorted(rng.randrange(6 * 60, 18 * 60) for _ in range(photos))
    dets = [detection(device, minute, rng) for minute in photo_minutes]
    for minute, det in zip(photo_minutes, dets, strict=True):
        day.messages[minute].append(det)
    for i, det in enumerate(rng.sample(dets, min(5, len(dets)))):
        day.messages[photo_minutes[dets.index(det)]].append(sample(device, det, seed=i))
    for minute in range(0, 1440, 5):
        day.messages[minute].append(telemetry(device, minute, rng))
    for minute, code in (
        (0, "agent_started"),
        (360, "camera_woke"),
        (720, "model_self_test_ok"),
        (1080, "camera_slept"),
    ):
        event = m.Event(farm_id=FARM, device_id=device, observed_at=at(minute), level="info", code=code,
                        message=f"{code.replace('_', ' ')}", details={"source": "cam-north"})  # fmt: skip
        day.messages[minute].append(event)
    return day


# --- broker and listener ----------------------------------------------------------------------


@contextlib.contextmanager
def mosquitto(workdir: Path) -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (workdir / "m.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n")
    proc = subprocess.Popen(["mosquitto", "-c", str(workdir / "m.conf")], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("mosquitto did not start")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait()


def _varint_len(n: int) -> int:
    return 1 if n < 128 else 2 if n < 16384 else 3 if n < 2_097_152 else 4


class Listener:
    """Subscribes to one device's topics and sums what the broker delivers, per kind."""

    def __init__(self, port: int, device: str) -> None:
        self.lock = threading.Lock()
        self.publishes = 0
        self.bytes: dict[str, int] = defaultdict(int)  # kind -> topic + payload
        self.mqtt_bytes = 0
        self.ids: dict[str, set[str]] = defaultdict(set)
        self.errors: list[str] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"listen-{device}", protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(f"cropwatch/v1/{FARM}/{device}/+", qos=1)
        if not subscribed.wait(10):
            raise RuntimeError("listener did not subscribe")

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        topic = msg.topic.encode()
        kind = msg.topic.rsplit("/", 1)[1]
        ctype = getattr(msg.properties, "ContentType", None)
        props = (3 + len(ctype.encode()) if ctype else 0) + (
            2 if hasattr(msg.properties, "PayloadFormatIndicator") else 0
        )
        remaining = 2 + len(topic) + 2 + _varint_len(props) + props + len(msg.payload)
        try:
            decoded = wire.decode_one(bytes(msg.payload), ctype, kind)
        except m.MessageError as exc:
            decoded = []
            self.errors.append(f"{msg.topic}: {exc}")
        with self.lock:
            self.publishes += 1
            self.bytes[kind] += len(topic) + len(msg.payload)
            self.mqtt_bytes += 1 + _varint_len(remaining) + remaining + 4  # + the PUBACK to the publisher
            for one in decoded:
                self.ids[kind].add(one.msg_id)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class CountingTransport(MqttTransport):
    published = 0

    def publish(self, *args: object, **kwargs: object) -> int | None:  # type: ignore[override]
        mid = super().publish(*args, **kwargs)  # type: ignore[arg-type]
        if mid is not None:
            self.published += 1
        return mid


# --- one run ----------------------------------------------------------------------------------


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.002)


def run_mode(mode: Mode, index: int, port: int, photos: int, workdir: Path) -> dict[str, object]:
    # Ids of one length in every mode (they are in every topic and payload), and a device per mode so
    # that one mode's retained status is not counted in the next.
    device = f"gw-{index:02d}"
    day = make_day(device, photos)
    if mode.shape_day is not None:
        day = mode.shape_day(day)
    identity = Identity(FARM, device)
    clock = [DAY0.timestamp()]
    now = lambda: clock[0]  # noqa: E731
    box = mode.make_outbox(workdir / f"{device}.db", now) if mode.make_outbox else None
    box = box or Outbox(workdir / f"{device}.db", budget_bytes=10**9, clock=now)
    listener = Listener(port, device)
    transport = CountingTransport(MqttSettings(port=port), f"bench-{device}", wire_settings=mode.wire)
    sender = Sender(box, transport, identity, 64, wire_settings=mode.wire, clock=now)
    transport.start()
    sender.start()
    statuses = set(day.status_minutes)
    made: dict[str, set[str]] = defaultdict(set)
    try:
        if not transport.wait_connected(10):
            raise RuntimeError("device did not connect")
        for minute in tqdm(range(1440), desc=mode.name, unit="min", leave=False):
            clock[0] = at(minute).timestamp()
            msgs = day.messages.get(minute, [])
            if msgs:
                box.add([to_out(identity, x) for x in msgs])
            for x in msgs:
                made[x.kind].add(x.msg_id)
            if minute in statuses:
                st = status(device, minute, random.Random(minute))
                made["status"].add(st.msg_id)
                transport.publish(identity.topic("status"), st.to_json(), qos=1, retain=True)
            sender.kick()
            wait_until(sender.settled, 30, "the sender to settle")
        clock[0] = at(1440).timestamp()
        if not sender.wait_idle(30):
            raise RuntimeError("outbox did not drain")
        wait_until(lambda: listener.publishes >= transport.published, 30, "the listener to receive everything")
    finally:
        sender.stop()
        transport.stop()
        listener.close()
        box.close()
    missing = {k: len(ids - listener.ids[k]) for k, ids in made.items() if ids - listener.ids[k]}
    return {
        "bytes": dict(listener.bytes), "mqtt_bytes": listener.mqtt_bytes, "publishes": listener.publishes,
        "made": {k: len(v) for k, v in made.items()}, "missing": missing, "errors": listener.errors[:3],
    }  # fmt: skip


def report(results: dict[str, dict[str, object]]) -> None:
    base = sum(results["json"]["bytes"].values()) if "json" in results else None  # type: ignore[attr-defined]
    print("\nBytes per device, counted by a listening subscriber (topic + payload); MQTT adds headers,")
    print("properties and the PUBACK (last column). Month = 30 days.\n")
    print("| mode | publishes/day | bytes/day | MB/month | vs json | MQTT bytes/day | detections delivered |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        total = sum(r["bytes"].values())  # type: ignore[attr-defined]
        ratio = f"{total / base:.3f}" if base else "-"
        made = r["made"]["detection"]  # type: ignore[index]
        got = made - r["missing"].get("detection", 0)  # type: ignore[attr-defined]
        print(
            f"| {name} | {r['publishes']} | {total:,} | {total * 30 / 1e6:.2f} | {ratio} | "
            f"{r['mqtt_bytes']:,} | {got}/{made} |"
        )
    kinds = sorted({k for r in results.values() for k in r["bytes"]})  # type: ignore[attr-defined]
    print("\nBytes per day by kind, topic + payload (per message in brackets; messages per day after the kind):\n")
    print("| kind | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for kind in kinds:
        made = next(iter(results.values()))["made"].get(kind, 0)  # type: ignore[attr-defined]
        cells = [
            f"{r['bytes'].get(kind, 0):,} ({r['bytes'].get(kind, 0) / max(made, 1):.0f})"  # type: ignore[attr-defined]
            for r in results.values()
        ]
        print(f"| {kind} ({made}) | " + " | ".join(cells) + " |")
    for name, r in results.items():
        if r["missing"] or r["errors"]:
            print(f"\n{name}: MISSING {r['missing']} errors {r['errors']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {', '.join(MODES)}")
    ap.add_argument("--photos", type=int, default=100)
    ap.add_argument("--batch-delay", type=float, default=900.0, help="batch_max_delay_s of compact+batch")
    args = ap.parse_args()
    MODES["compact+batch"].wire = MODES["compact+batch"].wire.model_copy(update={"batch_max_delay_s": args.batch_delay})
    if not shutil.which("mosquitto"):
        print("needs the mosquitto binary", file=sys.stderr)
        return 2
    names = [n.strip() for n in args.modes.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODES]
    if unknown:
        print(f"unknown mode(s) {', '.join(unknown)}; known: {', '.join(MODES)}", file=sys.stderr)
        return 2
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp, mosquitto(Path(tmp)) as port:
        for i, name in enumerate(names):
            t0 = time.perf_counter()
            results[name] = run_mode(MODES[name], i, port, args.photos, Path(tmp))
            print(f"{name}: simulated day in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    report(results)
    return 1 if any(r["missing"] or r["errors"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
