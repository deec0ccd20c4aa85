"""Benchmark: a device's simulated day through a real Mosquitto under each byte budget, and the
agent's idle CPU between uplink windows.

    python bench/uplink_budget.py [--idle-seconds 60] [--skip-idle]

Day section, one row per mode, all in this process: 100 detections (06:00-18:00), sensor polls
every 5 minutes, 10 low-confidence and 5 random samples (real PlantVillage leaves), the status
heartbeat every 60 s, through the agent's real outbox (SQLite file), uplink gate, sender and
MQTT v5 transport to a private Mosquitto, with the day's clock injected. Bytes are counted at the
broker side by a subscriber (topic + payload, as the issue measured). The first row is the agent
as it was (JSON, every heartbeat, raw telemetry); the ratio column is bytes against it.

Idle section: two real ``cropwatch agent`` processes at once, each with a sensor source (simulated
reader, every 300 s) and no model: the baseline as before (heartbeat 60 s), and a metered one
between its windows. CPU over the same minute from psutil cpu_times, in % of one core.
Targets (issue 21): every detection and status change delivered in every mode; idle CPU < 1 %.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import paho.mqtt.client as paho  # noqa: E402
import psutil  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from tqdm import tqdm  # noqa: E402

from edge_agent.outbox import Outbox  # noqa: E402
from edge_agent.pipeline import Identity, to_out  # noqa: E402
from edge_agent.sender import Sender  # noqa: E402
from edge_agent.transport import MqttTransport  # noqa: E402
from edge_agent.uplink.aggregate import TelemetryAggregator  # noqa: E402
from edge_agent.uplink.budget import message_wire_size  # noqa: E402
from edge_agent.uplink.gate import UplinkGate  # noqa: E402
from edge_agent.uplink.settings import UplinkSettings  # noqa: E402
from edge_agent.uplink.status import StatusPolicy  # noqa: E402
from edge_agent.uplink.windows import LinkSchedule  # noqa: E402
from shared.image import decode_image, encode_jpeg  # noqa: E402
from shared.messages import Detection, Health, Sample, Status, Telemetry  # noqa: E402
from shared.settings import MqttSettings  # noqa: E402
from tests.edge_helpers import to_toml  # noqa: E402
from tests.services import private_mosquitto  # noqa: E402

LEAVES = REPO.parent / "shared" / "data" / "leaf_sample"
# The first of a month: the day's allowance is then the month's budget / 30.
DAY = datetime(2026, 6, 1, tzinfo=UTC)
MODEL = {"name": "leaf-disease", "version": "1.3.0", "sha256": "5" * 64, "variant": "fp32"}
LABELS = ["Tomato___Late_blight", "Tomato___Early_blight", "Tomato___healthy"]


class Clock:
    def __init__(self) -> None:
        self.t = DAY.timestamp()

    def __call__(self) -> float:
        return self.t


class Counter:
    """A subscriber on the device's topics: bytes (topic + payload) and message ids by kind."""

    def __init__(self, port: int, device: str) -> None:
        self.bytes = 0
        self.ids: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"count-{device}", protocol=paho.MQTTv5)
        self.ready = threading.Event()
        self.client.on_connect = lambda c, *a: c.subscribe(f"cropwatch/v1/farm1/{device}/#", qos=1)
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        kind = msg.topic.rsplit("/", 1)[1]
        with self._lock:
            self.bytes += len(msg.topic.encode()) + len(msg.payload)
            self.ids.setdefault(kind, set()).add(json.loads(msg.payload)["msg_id"])

    def count(self, kind: str) -> int:
        with self._lock:
            return len(self.ids.get(kind, ()))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@dataclass
class DayResult:
    mode: str
    bytes_day: int = 0
    detections: int = 0
    statuses: int = 0
    telemetry: int = 0
    samples_sent: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    waiting: int = 0


def leaf_images(n: int, max_bytes: int | None) -> list[tuple[bytes, int, int]]:
    files = sorted(p for p in LEAVES.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]
    out = []
    for p in files:
        arr = decode_image(p.read_bytes(), (256, 256), resize="stretch")
        out.append((encode_jpeg(arr, quality=85, max_bytes=max_bytes), 256, 256))
    return out


def day_plan() -> list[tuple[int, str]]:
    """(minute of the day, what happens): detections, samples, sensor polls."""
    plan = [(m, "poll") for m in range(0, 1440, 5)]
    plan += [(360 + int(i * 7.2), "detection") for i in range(100)]
    plan += [(370 + i * 70, "sample:low_confidence") for i in range(10)]
    plan += [(400 + i * 130, "sample:random") for i in range(5)]
    return sorted(plan)


def _settle(box: Outbox, sender: Sender, deadline_s: float = 20.0) -> None:
    end = time.monotonic() + deadline_s
    sender.kick()
    while time.monotonic() < end and (sender.inflight() or box.has_sendable()):
        time.sleep(0.002)


def _detection(device: str, at: datetime, rng: np.random.Generator) -> Detection:
    p = rng.dirichlet(np.ones(3))
    return Detection(
        farm_id="farm1", device_id=device, observed_at=at, model=MODEL, source="cam1",
        image_ref=f"/var/lib/cropwatch/images/cam1/{at:%H%M}.jpg", image_sha256="e" * 64, field_id="north",
        top_k=[{"label": LABELS[i], "probability": float(p[i])} for i in np.argsort(-p)], inference_ms=41.7,
    )  # fmt: skip


def _sample(device: str, at: datetime, reason: str, image: tuple[bytes, int, int], cap: int | None) -> Sample:
    jpeg, w, h = image
    if cap is not None:  # the agent's pipeline caps a metered device's samples at sample_max_kb
        jpeg = encode_jpeg(decode_image(jpeg, (h, w)), quality=85, max_bytes=cap)
    return Sample(
        farm_id="farm1", device_id=device, observed_at=at, reason=reason, model=MODEL, field_id="north",
        source="cam1", predicted_label=LABELS[0], confidence=0.41, width=w, height=h, image_jpeg=jpeg,
    )  # fmt: skip


def _telemetry(device: str, at: datetime, rng: np.random.Generator) -> Telemetry:
    channels = [("soil1", "soil_moisture", 30, "%"), ("air1", "air_temperature", 18, "degC"),
                ("air1", "relative_humidity", 70, "%"), ("leaf1", "leaf_wetness", 20, "%")]  # fmt: skip
    readings = [
        {"sensor": s, "quantity": q, "value": round(v + float(rng.normal()), 2), "unit": u} for s, q, v, u in channels
    ]
    return Telemetry(farm_id="farm1", device_id=device, observed_at=at, field_id="north", readings=readings)


def _status(device: str, at: datetime, box: Outbox, policy: StatusPolicy, rng: np.random.Generator) -> Status:
    usage, started = box.uplink_usage(), DAY - timedelta(hours=3)
    health = Health(
        uptime_s=(at - started).total_seconds(), cpu_percent=round(float(rng.uniform(0, 3)), 3), memory_rss_mb=112.4,
        disk_free_mb=20511.0, temperature_c=51.2, inference_p50_ms=41.0, inference_p95_ms=55.0,
        uplink_bytes_today=usage.get("bytes_today"), uplink_bytes_month=usage.get("bytes_month"),
        uplink_budget_month=usage.get("budget_month"), uplink_allowance_today=usage.get("allowance_today"),
        uplink_waiting=usage.get("waiting"),
    )  # fmt: skip
    return Status(
        farm_id="farm1", device_id=device, observed_at=at, state="online", since=started, agent_version="0.4.0",
        models=[{"name": "leaf-disease", "version": "1.3.0", "sha256": "5" * 64}], health=health,
        next_contact_at=policy.next_contact(),
    )  # fmt: skip


@dataclass
class Device:
    """One simulated device: its outbox behind the gate, sender, transport and a broker-side counter."""

    name: str
    settings: UplinkSettings | None
    clock: Clock
    box: Outbox
    sender: Sender
    transport: MqttTransport
    counter: Counter
    policy: StatusPolicy
    aggregator: TelemetryAggregator | None

    @classmethod
    def start(cls, port: int, root: Path, settings: UplinkSettings | None) -> Device:
        name, clock, cfg = f"bench-{uuid.uuid4().hex[:8]}", Clock(), settings or UplinkSettings()
        schedule = LinkSchedule(cfg.windows, cfg.timezone)
        gate = UplinkGate(cfg, schedule) if settings is not None else None
        box = Outbox(root / f"{name}.sqlite3", 10**9, clock=clock, gate=gate)
        counter = Counter(port, name)
        counter.ready.wait(10)
        transport = MqttTransport(MqttSettings(host="127.0.0.1", port=port), client_id=f"cw-{name}")
        sender = Sender(box, transport, Identity("farm1", name), max_inflight=64)
        agg = TelemetryAggregator(cfg.telemetry_interval_s) if cfg.metered else None
        dev = cls(name, settings, clock, box, sender, transport, counter, StatusPolicy(cfg, schedule, 60.0, clock), agg)
        sender.start()
        transport.start()
        while not transport.connected:
            time.sleep(0.01)
        return dev

    def stop(self) -> None:
        self.sender.stop(2.0)
        self.transport.stop(timeout=2.0)
        self.counter.close()
        self.box.close()


def _minute(dev: Device, at: datetime, events: list[str], images: list[Any], rng: np.random.Generator) -> list[Any]:
    cfg = dev.settings
    cap = int(cfg.sample_max_kb * 1000) if cfg is not None and cfg.metered else None
    out: list[Any] = []
    for what in events:
        if what == "detection":
            out.append(_detection(dev.name, at, rng))
        elif what.startswith("sample:"):
            out.append(_sample(dev.name, at, what.split(":")[1], images[int(at.timestamp() // 60) % len(images)], cap))
        else:
            raw = _telemetry(dev.name, at, rng)
            out += [raw] if dev.aggregator is None else dev.aggregator.add(raw)
    return out


def simulate_day(port: int, root: Path, mode: str, settings: UplinkSettings | None, images: list[Any]) -> DayResult:
    dev = Device.start(port, root, settings)
    ident = Identity("farm1", dev.name)
    rng, plan, made, statuses = np.random.default_rng(7), day_plan(), set(), 0
    status_topic = ident.topic("status")
    for minute in tqdm(range(1440), desc=f"{mode:<28}", leave=False):
        at = DAY + timedelta(minutes=minute)
        dev.clock.t = at.timestamp()
        events = []
        while plan and plan[0][0] == minute:
            events.append(plan.pop(0)[1])
        out = _minute(dev, at, events, images, rng)
        made |= {m.msg_id for m in out if m.kind == "detection"}
        if out:
            dev.box.add([to_out(ident, m) for m in out])
        status = _status(dev.name, at, dev.box, dev.policy, rng)
        if dev.policy.due(status, force=minute == 0):
            payload = status.to_json()
            dev.transport.publish(status_topic, payload, qos=1, retain=True)
            dev.box.charge(message_wire_size(status_topic, payload))
            statuses += 1
        if out or minute % 15 == 0:
            _settle(dev.box, dev.sender)
    _settle(dev.box, dev.sender)
    # The counter sees what the broker forwarded; wait until it has every acknowledged message.
    end, counter = time.monotonic() + 20, dev.counter
    while time.monotonic() < end and sum(map(counter.count, list(counter.ids))) < statuses + dev.box.counters().get(
        "sent", 0
    ):
        time.sleep(0.05)
    counters = dev.box.counters()
    result = DayResult(
        mode=mode, bytes_day=counter.bytes, detections=len(counter.ids.get("detection", set()) & made),
        statuses=counter.count("status"), telemetry=counter.count("telemetry"), samples_sent=counter.count("sample"),
        dropped={k.removeprefix("budget_dropped_"): v for k, v in counters.items() if k.startswith("budget_dropped_")},
        waiting=int(dev.box.stats()["depth"] or 0),
    )  # fmt: skip
    dev.stop()
    return result


def idle_cpu(port: int, root: Path, seconds: float) -> tuple[float, float]:
    """CPU % of one core of a baseline agent and a metered agent between its windows, same minute."""
    now = datetime.now(UTC)
    # A window that starts an hour from now: the metered agent is asleep for the whole measurement.
    start = now + timedelta(hours=1)
    window = f"{start:%H:%M}-{start + timedelta(minutes=15):%H:%M}"
    procs = []
    for name, extra in [
        ("baseline", {}),
        ("metered", {"uplink": {"metered": True, "budget_mb_month": 5.0, "windows": window}}),
    ]:
        d = root / f"idle-{name}"
        d.mkdir(parents=True)
        doc = {
            "device": {"farm_id": "farm1", "device_id": f"idle-{name}"},
            "data_dir": str(d / "data"),
            "mqtt": {"host": "127.0.0.1", "port": port, "client_id": f"cw-idle-{name}-{uuid.uuid4().hex[:6]}"},
            "heartbeat": {"interval_s": 60},
            "log": {"format": "text", "level": "warning"},
            "sources": [{"type": "sensors", "name": "probes", "interval_s": 300}],
            **extra,
        }
        (d / "agent.toml").write_text(to_toml(doc))
        env = {k: v for k, v in os.environ.items() if not k.startswith("CROPWATCH_")}
        env["PYTHONPATH"] = str(REPO)
        log = open(d / "agent.log", "wb")  # noqa: SIM115 - the child writes it for its whole life
        procs.append(subprocess.Popen([sys.executable, "-m", "cropwatch", "agent", "--config", str(d / "agent.toml")],
                                      env=env, cwd=REPO, stderr=log))  # fmt: skip
    try:
        time.sleep(8.0)  # start-up (imports, first sensor poll, connect) is not idle
        ps = [psutil.Process(p.pid) for p in procs]
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"agent exited early: {proc.args}")
        t0, c0 = time.monotonic(), [sum(p.cpu_times()[:2]) for p in ps]
        for _ in tqdm(range(int(seconds)), desc="idle CPU", leave=False):
            time.sleep(1.0)
        dt = time.monotonic() - t0
        cpu = [100.0 * (sum(p.cpu_times()[:2]) - c) / dt for p, c in zip(ps, c0, strict=True)]
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
    return cpu[0], cpu[1]


MODES: list[tuple[str, UplinkSettings | None]] = [
    ("json today (baseline)", None),
    ("metered, no budget", UplinkSettings(metered=True)),
    ("metered, 5 MB/month", UplinkSettings(metered=True, budget_mb_month=5.0)),
    ("metered, 1 MB/month", UplinkSettings(metered=True, budget_mb_month=1.0)),
    ("metered, 0.5 MB/month", UplinkSettings(metered=True, budget_mb_month=0.5)),
    ("metered, 5 MB + 2 windows", UplinkSettings(metered=True, budget_mb_month=5.0, windows="06:00-06:15,18:00-18:15")),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--skip-idle", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with private_mosquitto(root / "mosquitto") as broker:
            images = leaf_images(15, None)
            results = [simulate_day(broker.port, root, mode, s, images) for mode, s in MODES]
            base = results[0].bytes_day
            print("\nA simulated day per device (bytes at the broker: topic + payload; month = 30 days)")
            print(f"{'mode':<28} {'KB/day':>8} {'MB/month':>9} {'ratio':>6} {'det':>5} {'status':>6} {'telem':>5} "
                  f"{'samples':>7} {'dropped':<22} {'waiting':>7}")  # fmt: skip
            for r in results:
                dropped = ", ".join(f"{k} {v}" for k, v in sorted(r.dropped.items())) or "-"
                print(f"{r.mode:<28} {r.bytes_day / 1e3:>8.1f} {r.bytes_day * 30 / 1e6:>9.2f} "
                      f"{r.bytes_day / base:>6.2f} {r.detections:>5} {r.statuses:>6} {r.telemetry:>5} "
                      f"{r.samples_sent:>7} {dropped:<22} {r.waiting:>7}")  # fmt: skip
            missing = [r.mode for r in results if r.detections != 100]
            print("every detection delivered in every mode" if not missing else f"DETECTIONS MISSING in {missing}")
            if not args.skip_idle:
                baseline, metered = idle_cpu(broker.port, root, args.idle_seconds)
                print(f"\nidle CPU over {args.idle_seconds:.0f} s, % of one core: baseline agent {baseline:.3f}, "
                      f"metered agent between windows {metered:.3f} (ratio {metered / max(baseline, 1e-9):.2f}; "
                      "target < 1 %)")  # fmt: skip


if __name__ == "__main__":
    main()
