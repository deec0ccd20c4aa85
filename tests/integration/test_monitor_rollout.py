"""Publish and roll back from the monitor's bridge: the CLI's code, a real broker, a real registry."""

from __future__ import annotations

import threading
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import text

from farm_monitor.app import rollout_bridge
from farm_monitor.app.auth import User
from farm_monitor.config import AppSettings, MonitorConfig
from farm_monitor.db import make_engine, migrate
from fleet.registry import Registry
from shared.manifest import TrustedKeys, generate_keypair, load_public_key
from shared.messages import parse_desired_model
from shared.topics import fleet_model_topic
from tests.integration.test_registry import make_release
from tests.services import Broker, wait_for


def test_publish_then_rollback_from_the_models_page(mqtt_broker: Broker, tmp_path: Path, sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    migrate(engine)
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO devices (farm_id, device_id) VALUES ('page-farm', 'gw-1'), ('page-farm', 'gw-2')")
        )
    priv, pub, _ = generate_keypair(tmp_path / "keys")
    registry = Registry(tmp_path / "registry")
    trusted = TrustedKeys([load_public_key(str(pub))])
    for version in ("1.0.0", "1.1.0"):
        registry.import_version(make_release(tmp_path / version, priv, version=version), trusted)
    cfg = MonitorConfig(
        database={"url": sqlite_url},
        app=AppSettings(
            registry=str(registry.root),
            rollout_broker=f"mqtt://{mqtt_broker.host}:{mqtt_broker.port}",
            rollout_base_url="http://registry.example.org:8600",
        ),
    )
    seen: list[str] = []
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="page-watch", protocol=mqtt.MQTTv5)
    sub.on_message = lambda _c, _u, msg: seen.append(parse_desired_model(msg.payload).version)
    ready = threading.Event()
    sub.on_subscribe = lambda *_a: ready.set()
    sub.connect(mqtt_broker.host, mqtt_broker.port)
    sub.loop_start()
    sub.subscribe(fleet_model_topic("page-farm", "leaf-disease"), qos=1)
    assert ready.wait(10)
    agronomist = User("ann", "agronomist", ("page-farm",))
    try:
        rollout_bridge.publish(agronomist, cfg, "page-farm", "leaf-disease", "1.0.0")
        rollout_bridge.publish(agronomist, cfg, "page-farm", "leaf-disease", "1.1.0")
        wait_for(lambda: seen[-1:] == ["1.1.0"], what="1.1.0 to be the desired model")
        rollout_bridge.rollback(agronomist, cfg, "page-farm", "leaf-disease")
        wait_for(lambda: seen[-1:] == ["1.0.0"], what="the rollback to 1.0.0")
    finally:
        sub.loop_stop()
        sub.disconnect()
    assert seen == ["1.0.0", "1.1.0", "1.0.0"]
    # The page's publishes are recorded in the monitor's database, by the user who made them.
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT device_id, role, desired_version, desired_by FROM device_models")).all()
    engine.dispose()
    assert sorted(tuple(r) for r in rows) == [(d, "champion", "1.0.0", "ann") for d in ("gw-1", "gw-2")]
