"""Helpers for the ingest tests: realistic messages, publishing, running ingest, reading back."""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from farm_monitor.config import MonitorConfig
from farm_monitor.db import make_engine
from shared.examples import example_messages
from shared.ids import new_msg_id
from shared.topics import device_topic
from tests.services import Broker, cropwatch_cmd, cropwatch_env, free_port, wait_for

KINDS = ("detection", "yield", "telemetry", "sample", "status", "event")
MSG_TABLES = ("detections", "yield_estimates", "samples", "status_reports", "events")


def make_messages(n: int, farm_id: str = "test-farm", devices: int = 5, seed: int = 1) -> list[tuple[str, bytes, str]]:
    """(topic, payload, msg_id) for n valid messages of every kind, each with a fresh msg_id."""
    rng = random.Random(seed)
    templates = []
    for i in range(devices):
        ex = example_messages(farm_id=farm_id, device_id=f"gw-{i:02d}", fixed=False)
        for kind in KINDS:
            msg = ex[kind]
            templates.append((device_topic(farm_id, msg.device_id, kind), msg.to_json(), msg.msg_id))
    out = []
    for i in range(n):
        topic, payload, old = templates[i % len(templates)] if i < len(templates) else rng.choice(templates)
        new = new_msg_id()
        out.append((topic, payload.replace(old.encode(), new.encode(), 1), new))
    return out


@contextlib.contextmanager
def publisher(broker: Broker) -> Iterator[mqtt.Client]:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{new_msg_id()}", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(500)
    client.max_queued_messages_set(0)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def publish_all(broker: Broker, items: list[tuple[str, bytes]], qos: int = 1) -> None:
    with publisher(broker) as client:
        infos = [client.publish(topic, payload, qos=qos) for topic, payload in items]
        for info in infos:
            info.wait_for_publish(30)
            assert info.rc == mqtt.MQTT_ERR_SUCCESS


def config(url: str, broker: Broker, **ingest: Any) -> MonitorConfig:
    # A group of its own: the persistent session a finished test leaves in a shared group on the
    # session-wide broker would otherwise be handed a share of the next test's messages.
    ingest.setdefault("shared_group", f"ingest-{new_msg_id().lower()}")
    return MonitorConfig.model_validate(
        {
            "database": {"url": url, "sqlite_synchronous": "NORMAL"},
            "mqtt": {"host": broker.host, "port": broker.port, "reconnect_min_s": 0.2, "reconnect_max_s": 1},
            "ingest": {"client_id": f"ingest-{new_msg_id().lower()}", "batch_max_s": 0.05, **ingest},
            "metrics": {"port": free_port()},
            "alerts": {"evaluate_every_s": 0.05},
        }
    )


@contextlib.contextmanager
def ingest_thread(cfg: MonitorConfig) -> Iterator[str]:
    """Run ingest in this process; yields its metrics base URL."""
    from farm_monitor.ingest.cli import run

    stop = threading.Event()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(run(cfg, stop)), daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{cfg.metrics.port}"
    try:
        wait_for(lambda: health(base).get("subscribed"), timeout=15, what="ingest to subscribe")
        yield base
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "ingest did not stop"
        assert result == [0]


def write_toml(path: Path, cfg: MonitorConfig) -> Path:
    """The config as monitor.toml (what an operator would write)."""

    def section(name: str, values: dict[str, Any]) -> list[str]:
        lines = [f"[{name}]"]
        for key, value in values.items():
            if value is None or isinstance(value, dict):
                continue
            lines.append(f"{key} = {json.dumps(value)}")
        return lines

    doc = cfg.model_dump(mode="json")
    lines: list[str] = []
    for name in ("database", "mqtt", "ingest", "metrics"):
        lines += section(name, doc[name])
    lines += section("alerts", {"evaluate_every_s": cfg.alerts.evaluate_every_s})
    path.write_text("\n".join(lines) + "\n")
    return path


def start_ingest_process(config_path: Path, log: Path, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cropwatch_cmd("ingest", "--config", str(config_path)),
        env=cropwatch_env(**env),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def health(base: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(base + "/healthz", timeout=2) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return json.loads(err.read())
    except OSError:
        return {}


def metrics_text(base: str) -> str:
    with urllib.request.urlopen(base + "/metrics", timeout=2) as resp:
        return resp.read().decode()


def metric(base: str, name: str) -> float:
    """Sum of a metric's series; 0 while the endpoint is not up yet."""
    try:
        text = metrics_text(base)
    except OSError:
        return 0.0
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def stored_ids(url: str, farm: str | None = None) -> list[str]:
    """Every stored msg_id; with ``farm``, only that farm's (other tests' retained statuses stay out)."""
    engine = make_engine(url)
    ids: list[str] = []
    where = f" WHERE farm_id = '{farm}'" if farm else ""
    try:
        with engine.connect() as conn:
            for table in MSG_TABLES:
                ids += [r[0] for r in conn.exec_driver_sql(f"SELECT msg_id FROM {table}{where}")]
            ids += [r[0] for r in conn.exec_driver_sql(f"SELECT DISTINCT msg_id FROM telemetry{where}")]
    except Exception:
        return []  # tables not created yet
    finally:
        engine.dispose()
    return ids


def query(url: str, sql: str) -> list[tuple]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.exec_driver_sql(sql)]
    finally:
        engine.dispose()
