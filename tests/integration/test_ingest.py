"""Ingest against a real Mosquitto and real SQLite/PostgreSQL: exactly once, crashes, bad input, scale-out."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading

import pytest

from shared.examples import example_messages
from shared.topics import device_topic
from tests.integration.ingest_helpers import (
    config,
    health,
    ingest_thread,
    make_messages,
    metric,
    metrics_text,
    publish_all,
    query,
    start_ingest_process,
    stored_ids,
    write_toml,
)
from tests.services import cropwatch_cmd, cropwatch_env, wait_for


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")


def test_1000_messages_replayed_three_times_shuffled_are_stored_exactly_once(own_broker, db_url):
    messages = make_messages(1000)
    replay = [(t, p) for t, p, _ in messages] * 3
    random.Random(3).shuffle(replay)
    cfg = config(db_url, own_broker, batch_max_messages=400)
    with ingest_thread(cfg) as base:
        publish_all(own_broker, replay)
        wait_for(lambda: metric(base, "cropwatch_ingest_received_total") >= 3000, timeout=60, what="3000 deliveries")
        assert metric(base, "cropwatch_ingest_dead_letters_total") == 0
    ids = stored_ids(db_url)
    assert len(ids) == 1000
    assert set(ids) == {mid for _, _, mid in messages}
    # one telemetry message with 4 readings is 4 rows, not 12
    telemetry = [m for t, _, m in messages if t.endswith("/telemetry")]
    assert query(db_url, "SELECT COUNT(*) FROM telemetry")[0][0] == 4 * len(telemetry)


def test_sigkill_mid_batch_then_restart_loses_nothing(own_broker, sqlite_url, tmp_path):
    # The first process holds its batch open (long time bound), so SIGKILL lands before any commit:
    # nothing may be in the database, and nothing may be lost after the restart.
    cfg = config(sqlite_url, own_broker, batch_max_messages=10_000, batch_max_s=60)
    path = write_toml(tmp_path / "monitor.toml", cfg)
    base = f"http://127.0.0.1:{cfg.metrics.port}"
    log = tmp_path / "ingest.log"
    first = start_ingest_process(path, log)
    try:
        wait_for(lambda: health(base).get("subscribed"), timeout=30, what="ingest to subscribe")
        messages = make_messages(300, seed=5)
        publish_all(own_broker, [(t, p) for t, p, _ in messages])
        wait_for(lambda: health(base).get("pending_messages") == 300, timeout=30, what="300 held uncommitted")
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
    assert stored_ids(sqlite_url) == []
    # published while ingest is down: the broker queues them in the persistent session
    later = make_messages(100, seed=6)
    publish_all(own_broker, [(t, p) for t, p, _ in later])

    second = start_ingest_process(path, log, CROPWATCH_INGEST__BATCH_MAX_S="0.05")
    try:
        wait_for(lambda: len(stored_ids(sqlite_url)) >= 400, timeout=60, what="400 stored after restart")
        received_after = metric(base, "cropwatch_ingest_received_total")
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0, log.read_text()[-3000:]
    finally:
        if second.poll() is None:
            second.kill()
    ids = stored_ids(sqlite_url)
    assert len(ids) == 400
    assert set(ids) == {m for _, _, m in messages + later}
    print(f"\nkill/replay: 300 held at SIGKILL, 0 stored; 100 published while down; after restart "
          f"{received_after:.0f} delivered, {len(ids)} stored, 0 lost, 0 duplicates")  # fmt: skip


def test_sigkill_while_batches_commit_loses_nothing_and_stores_once(own_broker, sqlite_url, tmp_path):
    # Small batches committing all the time: the kill lands between receive, commit and ack, so
    # after the restart some messages come again although stored (a commit whose PUBACKs never
    # left), and others come for the first time.
    cfg = config(sqlite_url, own_broker, batch_max_messages=50, batch_max_s=0.02)
    path = write_toml(tmp_path / "monitor.toml", cfg)
    base = f"http://127.0.0.1:{cfg.metrics.port}"
    log = tmp_path / "ingest.log"
    total = 5000
    messages = make_messages(total, seed=7)
    # Publishing runs beside ingest, so the kill lands while messages are still arriving.
    publisher = threading.Thread(target=publish_all, args=(own_broker, [(t, p) for t, p, _ in messages]))
    proc = start_ingest_process(path, log)
    try:
        wait_for(lambda: health(base).get("subscribed"), timeout=30, what="ingest to subscribe")
        publisher.start()
        wait_for(lambda: len(stored_ids(sqlite_url)) >= 300, timeout=30, what="some batches committed")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        if publisher.is_alive():
            publisher.join(60)
    at_kill = len(stored_ids(sqlite_url))
    assert at_kill < total, "the kill came too late to test anything"
    proc = start_ingest_process(path, log)
    try:
        wait_for(lambda: len(stored_ids(sqlite_url)) >= total, timeout=60, what="every message after the restart")
        wait_for(lambda: health(base).get("pending_messages") == 0, timeout=10)
        redelivered = metric(base, "cropwatch_ingest_received_total")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    ids = stored_ids(sqlite_url)
    assert len(ids) == total and set(ids) == {m for _, _, m in messages}
    assert query(sqlite_url, "SELECT COUNT(*) FROM dead_letters") == [(0,)]
    print(f"\nkill during commits: {at_kill} stored at SIGKILL; after restart {redelivered:.0f} delivered "
          f"({redelivered - (total - at_kill):.0f} of them already stored), {total} stored once, 0 lost")  # fmt: skip


def _bad_inputs() -> list[tuple[str, str, bytes]]:
    """(expected reason, topic, payload) for each kind of bad input."""
    ex = example_messages(farm_id="test-farm", device_id="gw-00", fixed=False)
    det = json.loads(ex["detection"].to_json())
    topic = device_topic("test-farm", "gw-00", "detection")

    def variant(**changes: object) -> bytes:
        return json.dumps({**det, "msg_id": example_messages(fixed=False)["detection"].msg_id, **changes}).encode()

    no_top_k = {k: v for k, v in det.items() if k != "top_k"}
    nan = variant().replace(b'"probability": 0.87', b'"probability": NaN')
    inf = variant().replace(b'"inference_ms": 41.5', b'"inference_ms": Infinity')
    assert b"NaN" in nan and b"Infinity" in inf
    return [
        ("invalid_json", topic, b'{"schema_version": 1, "msg_id": '),
        ("invalid_json", topic, b"\xff\xfe not utf-8"),
        ("schema", topic, json.dumps(no_top_k).encode()),
        ("schema", topic, variant(unexpected_field=1)),
        ("unknown_schema_version", topic, variant(schema_version=2)),
        ("topic_mismatch", device_topic("test-farm", "gw-01", "detection"), variant()),
        ("topic_mismatch", device_topic("other-farm", "gw-00", "detection"), variant()),
        ("kind_mismatch", device_topic("test-farm", "gw-00", "telemetry"), variant()),
        ("non_finite", topic, nan),
        ("non_finite", topic, inf),
        ("too_large", topic, variant(image_ref="x" * (400 * 1024))),
        ("too_deep", topic, b"[" * 100_000 + b"]" * 100_000),
        ("bad_topic", "cropwatch/v1/Test-Farm/gw-00/detection", variant()),
    ]


def test_bad_input_is_dead_lettered_and_never_blocks_valid_messages(own_broker, sqlite_url):
    bad = _bad_inputs()
    good = make_messages(len(bad) + 1, seed=9)
    stream: list[tuple[str, bytes]] = []
    for i, (topic, payload, _) in enumerate(good):
        stream.append((topic, payload))
        if i < len(bad):
            stream.append((bad[i][1], bad[i][2]))
    cfg = config(sqlite_url, own_broker, dead_letter_max_bytes=256)
    with ingest_thread(cfg) as base:
        publish_all(own_broker, stream)
        publish_all(own_broker, stream)  # a redelivered bad payload is not a second dead letter
        wait_for(lambda: metric(base, "cropwatch_ingest_received_total") >= 2 * len(stream), timeout=30)
        for reason in {r for r, _, _ in bad}:
            expected = 2 * sum(1 for r, _, _ in bad if r == reason)
            assert metric(base, f'cropwatch_ingest_dead_letters_total{{reason="{reason}"}}') == expected, reason
        assert health(base)["ok"] is True
    assert set(stored_ids(sqlite_url)) == {m for _, _, m in good}
    rows = query(sqlite_url, "SELECT reason, topic, payload_size, length(payload), detail FROM dead_letters")
    assert sorted(r[0] for r in rows) == sorted(r for r, _, _ in bad)
    for _reason, _topic, size, kept, detail in rows:
        assert kept <= 256 and kept <= size
        assert detail
    mismatch = [r for r in rows if r[0] == "topic_mismatch"]
    assert all("may publish only under its own ids" in r[4] for r in mismatch)


def test_two_ingest_processes_on_one_shared_subscription_store_each_message_once(own_broker, postgres_url, tmp_path):
    procs, bases = [], []
    try:
        for i in range(2):
            cfg = config(postgres_url, own_broker, shared_group="ingest", batch_max_messages=200)
            path = write_toml(tmp_path / f"monitor-{i}.toml", cfg)
            procs.append(start_ingest_process(path, tmp_path / f"ingest-{i}.log"))
            bases.append(f"http://127.0.0.1:{cfg.metrics.port}")
        for base in bases:
            wait_for(lambda b=base: health(b).get("subscribed"), timeout=30, what="both to subscribe")
        messages = make_messages(2000, seed=11)
        publish_all(own_broker, [(t, p) for t, p, _ in messages])
        wait_for(lambda: len(stored_ids(postgres_url)) >= 2000, timeout=60, what="2000 stored")
        received = [metric(b, "cropwatch_ingest_received_total") for b in bases]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            assert proc.wait(30) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert all(n > 0 for n in received), f"the group did not split the load: {received}"
    assert sum(received) == 2000, f"each message goes to one member: {received}"
    ids = stored_ids(postgres_url)
    assert len(ids) == 2000 and set(ids) == {m for _, _, m in messages}


def test_check_config_prints_resolved_config_with_secrets_redacted(tmp_path):
    path = tmp_path / "monitor.toml"
    path.write_text(
        '[database]\nurl = "postgresql+psycopg://u@db/x"\npassword = "hunter2"\n[ingest]\nshared_group = "g1"\n'
    )
    out = subprocess.run(
        cropwatch_cmd("ingest", "--config", str(path), "--check-config"),
        env=cropwatch_env(CROPWATCH_MQTT__HOST="broker.lan"),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    doc = json.loads(out)
    assert doc["database"]["password"] == "**********" and "hunter2" not in out
    assert doc["mqtt"]["host"] == "broker.lan" and doc["ingest"]["shared_group"] == "g1"
    path.write_text("[retention.days]\ntelemetry = 400\nsamplez = 90\n")
    bad = subprocess.run(
        cropwatch_cmd("ingest", "--config", str(path), "--check-config"),
        env=cropwatch_env(),
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "samplez" in bad.stderr


def test_ingest_reconnects_and_resubscribes_after_broker_restart(own_broker, sqlite_url):
    cfg = config(sqlite_url, own_broker)
    with ingest_thread(cfg) as base:
        first = make_messages(50, seed=21)
        publish_all(own_broker, [(t, p) for t, p, _ in first])
        wait_for(lambda: len(stored_ids(sqlite_url)) >= 50, timeout=30)
        own_broker.restart()
        wait_for(lambda: metric(base, "cropwatch_ingest_connects_total") >= 2, timeout=30, what="reconnect")
        wait_for(lambda: health(base).get("subscribed"), timeout=30)
        second = make_messages(50, seed=22)
        publish_all(own_broker, [(t, p) for t, p, _ in second])
        wait_for(lambda: len(stored_ids(sqlite_url)) >= 100, timeout=30, what="messages after the restart")
    assert set(stored_ids(sqlite_url)) == {m for _, _, m in first + second}


def test_sigterm_commits_and_acknowledges_what_it_holds(own_broker, sqlite_url, tmp_path):
    cfg = config(sqlite_url, own_broker, batch_max_messages=10_000, batch_max_s=60)
    path = write_toml(tmp_path / "monitor.toml", cfg)
    base = f"http://127.0.0.1:{cfg.metrics.port}"
    proc = start_ingest_process(path, tmp_path / "ingest.log")
    try:
        wait_for(lambda: health(base).get("subscribed"), timeout=30)
        messages = make_messages(120, seed=31)
        publish_all(own_broker, [(t, p) for t, p, _ in messages])
        wait_for(lambda: health(base).get("pending_messages") == 120, timeout=30)
        assert stored_ids(sqlite_url) == []
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert set(stored_ids(sqlite_url)) == {m for _, _, m in messages}
    # acknowledged: a restarted ingest on the same session gets nothing again
    proc = start_ingest_process(path, tmp_path / "ingest.log", CROPWATCH_INGEST__BATCH_MAX_S="0.05")
    try:
        wait_for(lambda: health(base).get("subscribed"), timeout=30)
        marker = make_messages(1, seed=32)
        publish_all(own_broker, [(t, p) for t, p, _ in marker])
        wait_for(lambda: metric(base, "cropwatch_ingest_received_total") >= 1, timeout=30)
        assert metric(base, "cropwatch_ingest_received_total") == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_metrics_endpoint_reports_prometheus_text(own_broker, sqlite_url):
    cfg = config(sqlite_url, own_broker)
    with ingest_thread(cfg) as base:
        publish_all(own_broker, [(t, p) for t, p, _ in make_messages(12, seed=41)])
        wait_for(lambda: metric(base, "cropwatch_ingest_received_total") >= 12, timeout=30)
        text = metrics_text(base)
    for name in (
        'cropwatch_ingest_received_total{kind="detection"}',
        'cropwatch_ingest_stored_rows_total{table="telemetry"}',
        "cropwatch_ingest_batch_seconds_count",
        "cropwatch_ingest_lag_seconds",
        "cropwatch_ingest_mqtt_connected",
    ):
        assert name in text, name


def test_database_outage_is_retried_and_nothing_is_lost(own_broker, sqlite_url):
    import sqlite3

    cfg = config(sqlite_url, own_broker, retry_min_s=0.05, retry_max_s=0.2)
    cfg.database.busy_timeout_s = 0.05
    with ingest_thread(cfg) as base:
        blocker = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock: every commit fails
        try:
            messages = make_messages(50, seed=61)
            publish_all(own_broker, [(t, p) for t, p, _ in messages])
            wait_for(lambda: metric(base, "cropwatch_ingest_db_errors_total") >= 2, timeout=30, what="retries")
            report = health(base)
            assert report["database_ok"] is False and report["ok"] is False
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        wait_for(lambda: len(stored_ids(sqlite_url)) >= 50, timeout=30, what="stored after the outage")
        wait_for(lambda: health(base).get("database_ok"), timeout=10)
    assert set(stored_ids(sqlite_url)) == {m for _, _, m in messages}


def test_ingest_started_before_the_broker_connects_when_it_comes_up(own_broker, sqlite_url):
    import threading

    from farm_monitor.ingest.cli import run

    own_broker.stop()
    cfg = config(sqlite_url, own_broker)
    base = f"http://127.0.0.1:{cfg.metrics.port}"
    stop = threading.Event()
    thread = threading.Thread(target=run, args=(cfg, stop), daemon=True)
    thread.start()
    try:
        wait_for(lambda: metric(base, "cropwatch_ingest_connect_failures_total") >= 2, timeout=30, what="retries")
        assert health(base)["ok"] is False
        own_broker.start()
        wait_for(lambda: health(base).get("subscribed"), timeout=30, what="subscription once the broker is up")
        messages = make_messages(20, seed=71)
        publish_all(own_broker, [(t, p) for t, p, _ in messages])
        wait_for(lambda: len(stored_ids(sqlite_url)) >= 20, timeout=30)
    finally:
        stop.set()
        thread.join(30)
