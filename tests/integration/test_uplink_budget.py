"""A metered uplink through a real Mosquitto: the byte budget by value, and send windows.

Real outbox SQLite file, real sender and MQTT v5 transport, a recording subscriber on the broker;
only the clock is injected (the outbox's and the link schedule's), so a day passes in no time.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.config import load_agent_config
from edge_agent.daemon import Agent
from edge_agent.outbox import Outbox
from edge_agent.pipeline import Identity, to_out
from edge_agent.sender import Sender
from edge_agent.transport import MqttTransport
from edge_agent.uplink.budget import message_wire_size
from edge_agent.uplink.gate import UplinkGate
from edge_agent.uplink.settings import UplinkSettings
from edge_agent.uplink.windows import LinkSchedule
from shared.image import encode_jpeg
from shared.messages import Detection, Event, Sample, Telemetry
from shared.settings import MqttSettings
from tests.edge_helpers import Recorder, agent_config, to_toml
from tests.services import Broker, wait_for

SHA = "a" * 64
MODEL = {"name": "leaf", "version": "1.0.0", "sha256": SHA}


class Clock:
    def __init__(self, at: datetime) -> None:
        self.t = at.timestamp()

    def __call__(self) -> float:
        return self.t


def _detection(ident: Identity, i: int) -> Detection:
    return Detection(
        **ident.envelope(), model=MODEL, source="cam", image_ref=f"img-{i}.jpg",
        top_k=[{"label": "late_blight", "probability": 0.91}, {"label": "healthy", "probability": 0.09}],
    )  # fmt: skip


def _sample(ident: Identity, i: int, reason: str) -> Sample:
    rng = np.random.default_rng(i)
    # Noise compresses badly: a 160x160 image of about 15 KB, like the demo's samples.
    jpeg = encode_jpeg(rng.integers(0, 255, (160, 160, 3), dtype=np.uint8), quality=70)
    return Sample(
        **ident.envelope(), reason=reason, model=MODEL, predicted_label="late_blight", confidence=0.4,
        width=160, height=160, image_jpeg=jpeg,
    )  # fmt: skip


def _telemetry(ident: Identity) -> Telemetry:
    return Telemetry(
        **ident.envelope(),
        readings=[{"sensor": "soil1", "quantity": "soil_moisture", "value": 31.0, "unit": "%",
                   "min": 29.5, "mean": 30.4, "max": 31.0, "count": 12}],
        interval_s=3600.0,
    )  # fmt: skip


def _event(ident: Identity, level: str, code: str) -> Event:
    return Event(**ident.envelope(), level=level, code=code, message=f"{code} happened")


class WatchedOutbox(Outbox):
    """The real outbox, counting the sender's requests (to know it looked while the link was closed)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.asked = 0

    def sendable(self, after_id: int, limit: int, inflight: set[int]) -> list[Any]:
        self.asked += 1
        return super().sendable(after_id, limit, inflight)


@contextmanager
def uplink(broker: Broker, tmp_path: Path, device: str, settings: UplinkSettings, clock: Clock) -> Iterator[Any]:
    ident = Identity("farm1", device)
    schedule = LinkSchedule(settings.windows, settings.timezone)
    box = WatchedOutbox(tmp_path / "outbox.sqlite3", 10**8, clock=clock, gate=UplinkGate(settings, schedule))
    recorder = Recorder(broker.port, topic=f"cropwatch/v1/farm1/{device}/#", client_id=f"rec-{device}")
    assert recorder.subscribed.wait(10)
    transport = MqttTransport(MqttSettings(host=broker.host, port=broker.port), client_id=f"cw-{device}")
    sender = Sender(box, transport, ident, max_inflight=8)
    try:
        yield ident, box, sender, transport, recorder
    finally:
        sender.stop(timeout=2.0)
        transport.stop(timeout=2.0)
        recorder.close()
        box.close()


def test_budget_smaller_than_a_day_delivers_every_detection_and_drops_only_lower_value(
    mqtt_broker: Broker, tmp_path: Path
) -> None:
    # Late in the day: the samples' pacing (edge_agent/uplink/budget.py) no longer holds them back.
    clock = Clock(datetime(2026, 6, 10, 23, 0, tzinfo=UTC))
    # 30 KB a day; the day's traffic below is about 260 KB.
    settings = UplinkSettings(metered=True, budget_mb_day=0.03, budget_mb_month=5.0, hold_s=20 * 3600.0)
    with uplink(mqtt_broker, tmp_path, "budget1", settings, clock) as (ident, box, sender, transport, rec):
        detections = [_detection(ident, i) for i in range(20)]
        alert = _event(ident, "error", "camera_failed")
        telemetry = [_telemetry(ident) for _ in range(6)]
        label = [_sample(ident, i, "low_confidence") for i in range(6)]
        routine = [_sample(ident, 100 + i, "random") for i in range(6)]
        debug = [_event(ident, "debug", "tick") for _ in range(3)]
        # Interleaved as a day makes them: samples first, detections after, so order alone cannot save them.
        day = [*routine[:3], *label[:3], *detections[:10], *debug, *telemetry, alert, *routine[3:], *label[3:],
               *detections[10:]]  # fmt: skip
        offered = sum(message_wire_size(ident.topic(m.kind), m.to_json()) for m in day)
        assert offered > 8 * 30_000
        box.add([to_out(ident, m) for m in day])
        sender.start()
        transport.start()

        must = {m.msg_id for m in [*detections, alert]}
        wait_for(lambda: must <= {m.msg_id for m in rec.parsed()}, 30, what="every detection and the alert")
        wait_for(lambda: sender.inflight() == 0 and not box.has_sendable(), 30, what="the sender to settle")
        got = {m.msg_id: m for m in rec.parsed()}
        counters = box.counters()
        # Everything must-go arrived; telemetry fits; routine samples and debug events were dropped, counted.
        assert must <= set(got)
        assert {m.msg_id for m in telemetry} <= set(got)
        assert counters.get("budget_dropped_sample") == len(routine)
        assert counters.get("budget_dropped_event") == len(debug)
        assert not ({m.msg_id for m in [*routine, *debug]} & set(got))
        # Labelling samples: re-encoded smaller while there was room, the rest wait for tomorrow.
        sent_labels = [got[m.msg_id] for m in label if m.msg_id in got]
        waiting = [m for m in label if m.msg_id not in got]
        assert sent_labels and waiting
        originals = {m.msg_id: m for m in label}
        assert all(len(s.image_jpeg) < len(originals[s.msg_id].image_jpeg) for s in sent_labels)
        assert box.stats()["depth"] == len(waiting)
        usage = box.uplink_usage()
        assert usage["waiting"] == len(waiting)
        # Over the allowance only by must-go bytes: the 15 % reserve absorbed them.
        must_bytes = sum(message_wire_size(ident.topic(m.kind), m.to_json()) for m in [*detections, alert])
        assert usage["bytes_today"] is not None and usage["bytes_today"] <= 30_000 + must_bytes

        # Tomorrow: a fresh allowance. Samples that fit go; those that still do not are past hold_s
        # (20 h) and are dropped, counted.
        clock.t += 86400
        sender.kick()
        wait_for(lambda: box.stats()["depth"] == 0, 30, what="the waiting samples to be sent or dropped")
        wait_for(lambda: sender.inflight() == 0, 30, what="the sender to settle")
        arrived = _arrived(rec, waiting)
        assert 0 < len(arrived) < len(waiting)
        assert box.counters().get("budget_dropped_sample") == len(routine) + len(waiting) - len(arrived)
        assert must <= {m.msg_id for m in rec.parsed()}


def _arrived(rec: Recorder, msgs: list[Sample]) -> set[str]:
    ids = {m.msg_id for m in msgs}
    return {m.msg_id for m in rec.parsed() if m.msg_id in ids}


def test_window_holds_messages_until_it_opens_then_drains_by_value(mqtt_broker: Broker, tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 6, 10, 5, 0, tzinfo=UTC))
    settings = UplinkSettings(windows="06:00-06:15,18:00-18:15")
    with uplink(mqtt_broker, tmp_path, "window1", settings, clock) as (ident, box, sender, transport, rec):
        sender.start()
        transport.start()
        wait_for(lambda: transport.connected, 10, what="the agent's connection")
        made = [
            _telemetry(ident),
            _sample(ident, 1, "random"),
            _detection(ident, 1),
            _event(ident, "warning", "sensor_stuck"),
            _sample(ident, 2, "low_confidence"),
            _event(ident, "info", "model_swapped"),
            _detection(ident, 2),
        ]
        box.add([to_out(ident, m) for m in made])
        for _ in range(2):
            asked = box.asked
            sender.kick()
            wait_for(lambda n=asked: box.asked > n, 15, what="the sender to look while the window is closed")
        assert rec.parsed() == []
        assert box.stats()["depth"] == len(made) and sender.inflight() == 0

        clock.t = datetime(2026, 6, 10, 6, 0, 30, tzinfo=UTC).timestamp()
        sender.kick()
        wait_for(lambda: len(rec.parsed()) == len(made), 30, what="the window's drain")
        order = [m.msg_id for m in rec.parsed()]
        expected = [made[i].msg_id for i in (2, 3, 6, 0, 5, 4, 1)]  # must-go, useful, labelling, routine
        assert order == expected
        wait_for(lambda: box.stats()["depth"] == 0, 15, what="the PUBACKs to clear the outbox")
        # The device promises its next contact at the next window.
        assert datetime.fromtimestamp(settings_next(settings, clock.t), UTC) == datetime(2026, 6, 10, 18, 0, tzinfo=UTC)


def settings_next(settings: UplinkSettings, t: float) -> float:
    nxt = LinkSchedule(settings.windows, settings.timezone).next_open(t)
    assert nxt is not None
    return nxt


@contextmanager
def running_agent(doc: dict[str, Any]) -> Iterator[Agent]:
    path = Path(doc["data_dir"]).parent / "agent.toml"
    path.write_text(to_toml(doc))
    agent = Agent(load_agent_config(path), config_path=path)
    agent.start()
    thread = threading.Thread(target=agent.run, name="agent-main")
    thread.start()
    try:
        yield agent
    finally:
        agent.request_stop()
        thread.join(30)
        agent.stop()


def online_statuses(rec: Recorder) -> list[Any]:
    return [x for x in rec.parsed("status", live_only=False) if x.state == "online"]


def test_a_metered_agent_reports_its_budget_and_next_contact_and_aggregates_telemetry(
    mqtt_broker: Broker, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    start = (now - timedelta(minutes=2)).replace(second=0, microsecond=0)
    window = f"{start:%H:%M}-{start + timedelta(minutes=15):%H:%M}"  # open now, next one tomorrow
    doc = agent_config(
        tmp_path, mqtt_broker.port, {},
        uplink={"metered": True, "budget_mb_month": 5.0, "windows": window},
        sources=[{"type": "sensors", "name": "probes", "interval_s": 0.2}],
    )  # fmt: skip
    rec = Recorder(mqtt_broker.port, client_id=f"rec-{uuid.uuid4().hex[:8]}")
    assert rec.subscribed.wait(10)
    try:
        with running_agent(doc) as agent:
            # Online only: the session broker may still hold an earlier agent's retained shutdown status.
            wait_for(lambda: online_statuses(rec), 15, what="the agent's status")
            wait_for(lambda: len(agent.outbox.readings("soil_moisture", 0)) >= 3, 15, what="a few sensor polls")
            # Hourly aggregation: the polls so far are one interval still open, nothing sent yet.
            assert rec.parsed("telemetry") == []
        status = online_statuses(rec)[0]
        assert status.next_contact_at == start + timedelta(days=1, seconds=60)
        assert status.health.uplink_budget_month == 5_000_000
        assert status.health.uplink_bytes_today is not None
        # At shutdown the open interval goes out as one aggregated message (the window is open).
        wait_for(lambda: rec.parsed("telemetry"), 10, what="the aggregated telemetry")
        (agg,) = rec.parsed("telemetry")
        assert isinstance(agg, Telemetry) and agg.interval_s is not None
        assert all(r.count is not None and r.count >= 3 for r in agg.readings)
    finally:
        rec.close()
