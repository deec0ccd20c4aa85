"""The agent in-process against real Mosquitto brokers, real ONNX models and real SQLite files."""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.config import load_agent_config
from edge_agent.daemon import Agent
from edge_agent.sources import Reading, ReadingsItem
from shared.messages import CaptureNow, Ping, SetLogLevel
from shared.topics import command_topic
from tests.edge_helpers import (
    DEVICE,
    FARM,
    Recorder,
    agent_config,
    broker_user_lines,
    leaf_files,
    make_tls,
    model_section,
    to_toml,
)
from tests.edge_models import build_classifier, build_yield_model
from tests.services import Broker, private_mosquitto, wait_for


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("edge-models")
    classifier = build_classifier(root / "leaf")
    return classifier, build_yield_model(root / "yield", key_dir=root / "leaf")


# Persistence must work for the outage test: a subscriber's queued messages survive a restart.
AS_ROOT = broker_user_lines()


@pytest.fixture
def restartable_broker(tmp_path: Path) -> Iterator[Broker]:
    with private_mosquitto(tmp_path / "mosquitto", AS_ROOT) as broker:
        yield broker


@contextlib.contextmanager
def running(doc: dict) -> Iterator[Agent]:  # type: ignore[type-arg]
    """The agent from a real TOML file (secrets from files, relative paths) on a thread of this process."""
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


def recorder(port: int, **kw: str) -> Recorder:
    rec = Recorder(port, client_id=f"rec-{uuid.uuid4().hex[:8]}", **kw)
    wait_for(rec.subscribed.is_set, 10, what="recorder subscribed")
    return rec


class SentLog:
    """Every message the agent stored in its outbox, in order (wraps the real outbox's add)."""

    def __init__(self, agent: Agent) -> None:
        self.ids: list[tuple[str, str]] = []
        original = agent.outbox.add

        def add(messages, **kw):  # type: ignore[no-untyped-def]
            messages = list(messages)
            dropped = original(messages, **kw)
            self.ids.extend((m.kind, m.msg_id) for m in messages if m.msg_id not in dropped)
            return dropped

        agent.outbox.add = add  # type: ignore[method-assign]


def delivery_report(sent: list[tuple[str, str]], rec: Recorder) -> dict[str, int]:
    received = [(m.kind, m.msg_id) for m in rec.parsed() if m.kind != "status"]
    counts = Counter(received)
    sent_set = set(sent)
    return {
        "sent": len(sent),
        "received": len(received),
        "duplicates": sum(c - 1 for c in counts.values()),
        "lost": len(sent_set - set(counts)),
        "unexpected": len(set(counts) - sent_set),
        "redelivered_to_subscriber": len(rec.redelivered),
    }


def test_results_arrive_and_validate(tmp_path: Path, mqtt_broker, models, team_data: Path) -> None:  # type: ignore[no-untyped-def]
    classifier, yield_model = models
    leaf_files(tmp_path / "inbox", team_data, 6)
    rec = recorder(mqtt_broker.port)
    doc = agent_config(
        tmp_path,
        mqtt_broker.port,
        model_section(classifier, yield_model),
        sources=[
            {
                "type": "folder",
                "name": "drop",
                "path": str(tmp_path / "inbox"),
                "settle_s": 0,
                "scan_interval_s": 0.2,
                "after": "move",
                "move_to": str(tmp_path / "done"),
            },
            {"type": "simulated_camera", "name": "sim", "interval_s": 0.1, "count": 2, "width": 320, "height": 240},
            {"type": "sensors", "name": "env", "interval_s": 0.2},
        ],
        samples={"confidence_below": 1.0, "max_per_hour": 3, "max_per_day": 10},
    )
    try:
        with running(doc) as agent:
            wait_for(lambda: len(rec.parsed("detection")) >= 8, 30, what="8 detections")
            agent.run_yield()
            agent.publish_status()
            wait_for(lambda: rec.parsed("yield") and rec.parsed("status"), 10, what="yield and status")
            wait_for(lambda: len(list((tmp_path / "done").glob("*.jpg"))) == 6, 10, what="files moved")
        detections = rec.parsed("detection")
        assert len(detections) == 8
        assert {d.source for d in detections} == {"drop", "sim"}
        refs = sorted(d.image_ref for d in detections if d.source == "drop")
        assert refs == [f"file://{tmp_path / 'inbox' / f'{i:04d}.jpg'}" for i in range(6)]
        for d in detections:
            assert d.model.name == "leafnet" and d.model.sha256 == classifier.manifest.sha256
            assert d.top_k[0].label in classifier.manifest.labels and len(d.top_k) == 3
        samples = rec.parsed("sample")
        assert len(samples) == 3  # every image is below 1.0, the hourly cap holds
        by_id = {d.msg_id for d in detections}
        for s in samples:
            assert s.detection_msg_id in by_id and s.reason == "low_confidence"
            assert len(s.image_jpeg) <= 256 * 1024 and max(s.width, s.height) <= 640
        assert rec.parsed("telemetry")[0].readings[0].quantity == "soil_moisture"
        estimate = rec.parsed("yield")[0]
        assert estimate.model.name == "yieldnet" and estimate.quantiles.p10 <= estimate.quantiles.p90
        status = [s for s in rec.parsed("status") if s.state == "online"][-1]
        assert {m.name for m in status.models} == {"leafnet", "yieldnet"}
        assert status.health is not None and status.health.inference_p50_ms is not None
        assert [s for s in rec.parsed("status")][-1].state == "offline"  # said goodbye on stop
    finally:
        rec.close()


def test_corrupt_and_truncated_images_are_skipped_and_counted(
    tmp_path: Path, mqtt_broker, models, team_data: Path
) -> None:  # type: ignore[no-untyped-def]
    classifier, _ = models
    inbox = tmp_path / "inbox"
    good = leaf_files(inbox, team_data, 2)
    data = good[0].read_bytes()
    (inbox / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (inbox / "garbage.jpg").write_bytes(b"this is not a picture at all" * 10)
    (inbox / "empty.png").write_bytes(b"")
    rec = recorder(mqtt_broker.port)
    doc = agent_config(tmp_path, mqtt_broker.port, model_section(classifier),
                       sources=[{"type": "folder", "name": "drop", "path": str(inbox), "settle_s": 0,
                                 "scan_interval_s": 0.2}])  # fmt: skip
    try:
        with running(doc) as agent:
            wait_for(lambda: agent.pipeline.processed["rejected"] == 3 and len(rec.parsed("detection")) == 2, 20,
                     what="2 detections and 3 rejects")  # fmt: skip
            agent.publish_status()
            wait_for(lambda: _online(rec) and len(_online(rec)[-1].health.errors) == 3, 10, what="status with errors")
            assert agent.outbox.is_seen("drop", next(k for k in _keys(inbox) if k.startswith("garbage")))
        errors = [s for s in rec.parsed("status") if s.state == "online"][-1].health.errors
        assert errors == {"image_truncated": 1, "image_not_an_image": 1, "image_empty": 1}
        assert len(rec.parsed("detection")) == 2
    finally:
        rec.close()


def _online(rec: Recorder) -> list:  # type: ignore[type-arg]
    return [s for s in rec.parsed("status") if s.state == "online" and s.health is not None]


def _keys(folder: Path) -> list[str]:
    return [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in folder.iterdir()]


def test_broker_outage_every_message_arrives_in_order_and_held_ones_again(
    tmp_path: Path, restartable_broker, models, team_data: Path
) -> None:  # type: ignore[no-untyped-def]
    classifier, _ = models
    inbox = tmp_path / "inbox"
    rec = recorder(restartable_broker.port)
    doc = agent_config(tmp_path, restartable_broker.port, model_section(classifier),
                       sources=[{"type": "folder", "name": "drop", "path": str(inbox), "settle_s": 0,
                                 "scan_interval_s": 0.2}], samples={"enabled": False})  # fmt: skip
    try:
        with running(doc) as agent:
            log = SentLog(agent)

            def telemetry(n: int) -> None:
                for i in range(n):
                    agent.pipeline.queue.put(ReadingsItem("env", [Reading("soil1", "soil_moisture", 20.0 + i, "%")]))

            leaf_files(inbox, team_data, 10)
            telemetry(5)
            wait_for(lambda: len(rec.parsed()) >= 15, 30, what="phase 1 delivered")
            wait_for(lambda: agent.outbox.stats()["depth"] == 0 and agent.sender.inflight() == 0, 10, what="idle")
            restartable_broker.stop()
            wait_for(lambda: not agent.transport.connected, 10, what="agent notices the outage")
            leaf_files(inbox, team_data, 20, start=10)
            telemetry(10)
            wait_for(lambda: agent.outbox.stats()["depth"] == 30, 30, what="outage results stored in the outbox")
            restartable_broker.start()
            wait_for(lambda: delivery_report(log.ids, rec)["lost"] == 0, 60, what="everything delivered")
            wait_for(lambda: agent.outbox.stats()["depth"] == 0, 10, what="outbox drained")
            resent = agent.outbox.counters().get("resent_after_reconnect", 0)
        report = delivery_report(log.ids, rec)
        print("\nOUTAGE", json.dumps(report), "resent after reconnect", resent)
        report.pop("redelivered_to_subscriber")
        # The 15 messages acknowledged before the outage are sent again after it (the broker might
        # have crashed before saving them, edge_agent/held.py); ingest stores each msg_id once.
        assert resent == 15
        assert report == {"sent": 45, "received": 45 + resent, "duplicates": resent, "lost": 0, "unexpected": 0}
        first_seen = list(dict.fromkeys((m.kind, m.msg_id) for m in rec.parsed() if m.kind != "status"))
        for kind in ("detection", "telemetry"):
            assert [i for k, i in first_seen if k == kind] == [i for k, i in log.ids if k == kind], kind
        refs = list(dict.fromkeys(m.image_ref for m in rec.parsed("detection")))
        assert refs == sorted(refs)  # files in the order they arrived (names sort like their mtimes)
    finally:
        rec.close()


def test_publish_denied_by_acl_stays_in_outbox_and_is_reported(tmp_path: Path, models, team_data: Path) -> None:  # type: ignore[no-untyped-def]
    classifier, _ = models
    broker_dir = tmp_path / "mosquitto"
    broker_dir.mkdir()
    pwfile = broker_dir / "passwords"
    for i, (user, pw) in enumerate((("dev1", "dev1-secret"), ("monitor", "monitor-secret"))):
        subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if i == 0 else []), str(pwfile), user, pw], check=True,
                       capture_output=True)  # fmt: skip
    acl = broker_dir / "acl"
    prefix = f"cropwatch/v1/{FARM}/{DEVICE}"
    acl.write_text(
        # The device may send status, events and telemetry but not detections: a misprovisioned ACL.
        f"user dev1\ntopic write {prefix}/status\ntopic write {prefix}/event\ntopic write {prefix}/telemetry\n"
        f"topic read {prefix}/cmd/#\n\nuser monitor\ntopic readwrite cropwatch/#\n"
    )
    (tmp_path / "dev1.pw").write_text("dev1-secret\n")
    with private_mosquitto(
        broker_dir, [*AS_ROOT, f"password_file {pwfile}", f"acl_file {acl}", "allow_anonymous false"]
    ) as b:
        rec = recorder(b.port, username="monitor", password="monitor-secret")
        doc = agent_config(tmp_path, b.port, model_section(classifier),
                           sources=[{"type": "folder", "name": "drop", "path": str(tmp_path / "inbox"),
                                     "settle_s": 0, "scan_interval_s": 0.2}],
                           samples={"enabled": False})  # fmt: skip
        doc["mqtt"].update(username="dev1", password_file=str(tmp_path / "dev1.pw"))
        try:
            with running(doc) as agent:
                leaf_files(tmp_path / "inbox", team_data, 3)
                agent.pipeline.queue.put(ReadingsItem("env", [Reading("soil1", "soil_moisture", 20.0, "%")]))
                wait_for(lambda: len(agent.outbox.refused_rows()) == 3, 20, what="3 refused detections")
                wait_for(lambda: rec.parsed("event") and rec.parsed("telemetry"), 10, what="event and telemetry")
                agent.publish_status()
                wait_for(lambda: _online(rec) and _online(rec)[-1].health.outbox_refused == 3, 10, what="status")
                refused = agent.outbox.refused_rows()
                assert [(k, code) for _, k, code in refused] == [("detection", 135)] * 3
                assert agent.outbox.counters()["refused"] == 3
                # The refused three are kept, not lost; everything else drains. Mosquitto drops the
                # connection after each refusal, so an event may still be on its way at this point.
                wait_for(lambda: agent.outbox.stats()["depth"] == 3, 20, what="all but the refused sent")
            event = rec.parsed("event")[0]
            assert event.code == "publish_refused" and event.details["reason_code"] == 135
            assert event.details["kind"] == "detection" and event.details["msg_id"] == refused[0][0]
            assert rec.parsed("detection") == []
            health = [s for s in rec.parsed("status") if s.state == "online"][-1].health
            assert health.outbox_refused == 3 and health.errors["publish_refused"] == 3
        finally:
            rec.close()


def test_malformed_commands_get_error_events_and_retained_ones_are_ignored(tmp_path: Path, mqtt_broker, models) -> None:  # type: ignore[no-untyped-def]
    classifier, _ = models
    rec = recorder(mqtt_broker.port)
    stale = Ping(farm_id=FARM, device_id=DEVICE)
    rec.publish(command_topic(FARM, DEVICE, "ping"), stale.to_json(), retain=True)
    camera = {"type": "simulated_camera", "name": "sim", "count": 0, "interval_s": 3600, "width": 160, "height": 120}
    doc = agent_config(tmp_path, mqtt_broker.port, model_section(classifier), sources=[camera])
    root_level = logging.getLogger().level
    try:
        with running(doc) as agent:
            wait_for(lambda: agent.transport.connected, 10, what="agent connected")
            wait_for(lambda: rec.parsed("status"), 10, what="online status")
            bad = [
                ("ping", b"{broken"),
                ("set_log_level", b'{"schema_version": 1, "kind": "command", "command": "set_log_level"}'),
                ("capture_now", SetLogLevel(farm_id=FARM, device_id=DEVICE, level="debug").to_json()),
                ("ping", b"\x00" * 100),
            ]
            for cmd, payload in bad:
                rec.publish(command_topic(FARM, DEVICE, cmd), payload)
            rec.publish(f"cropwatch/v1/{FARM}/{DEVICE}/cmd/reboot", b"{}")
            live = Ping(farm_id=FARM, device_id=DEVICE)
            rec.publish(command_topic(FARM, DEVICE, "ping"), live.to_json())
            wait_for(lambda: any(e.code == "pong" for e in rec.parsed("event")), 10, what="pong")
            wait_for(lambda: len(rec.parsed("event")) >= 6, 10, what="6 events")
            assert agent.pipeline.alive() and agent.sender.alive() and agent.transport.connected
            # The valid commands do what they say.
            capture = CaptureNow(farm_id=FARM, device_id=DEVICE, source="sim")
            rec.publish(command_topic(FARM, DEVICE, "capture_now"), capture.to_json())
            wait_for(lambda: rec.parsed("sample"), 10, what="requested sample")
            assert rec.parsed("sample")[0].reason == "requested" and rec.parsed("detection")[0].source == "sim"
            debug = SetLogLevel(farm_id=FARM, device_id=DEVICE, level="debug")
            rec.publish(command_topic(FARM, DEVICE, "set_log_level"), debug.to_json())
            wait_for(lambda: logging.getLogger().level == logging.DEBUG, 10, what="log level debug")
        events = rec.parsed("event")
        errors = [e for e in events if e.code == "bad_command"]
        assert sorted(e.details["reason"] for e in errors) == sorted(
            ["invalid_json", "schema", "kind_mismatch", "invalid_json", "unknown_command"]
        )
        pongs = [e for e in events if e.code == "pong"]
        assert [p.details["command_msg_id"] for p in pongs] == [live.msg_id]  # never the retained one
    finally:
        logging.getLogger().setLevel(root_level)
        rec.publish(command_topic(FARM, DEVICE, "ping"), b"", retain=True)
        rec.close()


def test_tls_with_client_certificate(tmp_path: Path, models) -> None:  # type: ignore[no-untyped-def]
    classifier, _ = models
    tls = make_tls(tmp_path / "tls")
    lines = [
        *AS_ROOT,
        f"cafile {tls['ca']}",
        f"certfile {tls['server_cert']}",
        f"keyfile {tls['server_key']}",
        "require_certificate true",
        "use_identity_as_username true",
    ]
    with private_mosquitto(tmp_path / "mosquitto", lines) as broker:
        # Nobody subscribes here: the broker's PUBACK 0x10 (no subscribers) counts as delivered.
        doc = agent_config(tmp_path, broker.port, model_section(classifier), outbox={"retry_no_subscribers": False})
        doc["mqtt"]["tls"] = {"enabled": True, "ca_file": str(tls["ca"]), "cert_file": str(tls["client_cert"]),
                              "key_file": str(tls["client_key"])}  # fmt: skip
        with running(doc) as agent:
            wait_for(lambda: agent.transport.connected, 15, what="TLS connection")
            agent.event("info", "tls_check", "hello over TLS")
            wait_for(lambda: agent.outbox.counters().get("sent", 0) >= 1 and agent.outbox.stats()["depth"] == 0, 10,
                     what="event acknowledged over TLS")  # fmt: skip
        log = (tmp_path / "mosquitto" / "mosquitto.log").read_text()
        assert f"u'{DEVICE}'" in log  # the broker took the username from the client certificate


def test_disk_budget_drops_low_priority_first_and_keeps_events(tmp_path: Path, restartable_broker, models) -> None:  # type: ignore[no-untyped-def]
    classifier, _ = models
    rec = recorder(restartable_broker.port)
    restartable_broker.stop()
    # Room for about a dozen small messages; the link is down, so everything piles up.
    doc = agent_config(tmp_path, restartable_broker.port, model_section(classifier),
                       outbox={"budget_mb": 0.006}, samples={"enabled": False})  # fmt: skip
    try:
        with running(doc) as agent:
            log = SentLog(agent)
            for i in range(30):
                agent.pipeline.queue.put(ReadingsItem("env", [Reading("soil1", "soil_moisture", float(i), "%")]))
            wait_for(lambda: agent.pipeline.processed["telemetry"] == 30, 10, what="telemetry stored")
            for i in range(8):
                agent.event("warning", "frost_alert", f"frost risk {i}")
            stored_before = agent.outbox.stats()
            counters = agent.outbox.counters()
            assert counters["dropped_telemetry"] >= 8
            assert stored_before["bytes"] > 0
            restartable_broker.start()
            wait_for(lambda: agent.outbox.stats()["depth"] == 0, 20, what="outbox drained")
            agent.publish_status()
            wait_for(lambda: _online(rec) and _online(rec)[-1].health.dropped, 10, what="status with drops")
        events = [e for e in rec.parsed("event") if e.code == "frost_alert"]
        assert [e.message for e in events] == [f"frost risk {i}" for i in range(8)]  # alerts never dropped
        telemetry = [t.readings[0].value for t in rec.parsed("telemetry")]
        # The newest readings survived, in order; the oldest went first.
        assert telemetry == sorted(telemetry) and telemetry[-1] == 29.0
        assert len(telemetry) == 30 - counters["dropped_telemetry"]
        stored = {i for k, i in log.ids if k == "telemetry"}
        assert len(stored) == 30  # each was stored, and the oldest were displaced later
        health = _online(rec)[-1].health
        assert health.dropped["dropped_telemetry"] == counters["dropped_telemetry"]
    finally:
        rec.close()


def test_status_goes_on_when_the_device_clock_jumps_back(
    tmp_path: Path, mqtt_broker, models, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """Found by the chaos soak: uptime was taken from the wall clock, went negative after the clock
    was set back three hours, and every heartbeat failed validation until the clock returned."""
    from shared import ids

    classifier, _ = models
    offset = tmp_path / "clock-offset"
    offset.write_text("0\n")
    monkeypatch.setattr(ids, "_offset_file", str(offset))
    monkeypatch.setattr(ids, "_offset_cache", (-1.0, 0.0))
    monkeypatch.setattr(ids, "_last_ms", ids._last_ms)
    monkeypatch.setattr(ids, "_last_rand", ids._last_rand)
    rec = recorder(mqtt_broker.port)
    try:
        with running(agent_config(tmp_path, mqtt_broker.port, model_section(classifier))) as agent:
            offset.write_text("-10800\n")
            ids._offset_cache = (-1.0, 0.0)  # read the file again now, not at its next mtime tick
            assert ids.wall_time() < time.time() - 10000
            assert agent.health().uptime_s >= 0
            agent.publish_status()
            wait_for(lambda: any(s.health and s.health.uptime_s >= 0 for s in rec.parsed("status", live_only=False)
                                 if s.observed_at.timestamp() < time.time() - 10000), 10,
                     what="a status made after the jump")  # fmt: skip
    finally:
        rec.close()
