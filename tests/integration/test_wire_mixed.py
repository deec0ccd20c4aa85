"""Devices in JSON, CBOR and zstd batches on one broker and one ingest: every message stored once.

Each device is the agent's own outbox, sender and MQTT transport (the daemon's publish path) against
a real Mosquitto; ingest runs in this process on a real SQLite file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.outbox import Outbox
from edge_agent.pipeline import Identity, to_out
from edge_agent.sender import Sender
from edge_agent.transport import MqttTransport
from shared import messages as m, wire
from shared.examples import example_messages
from shared.ids import new_msg_id
from shared.settings import MqttSettings
from shared.topics import device_topic
from tests.integration.ingest_helpers import (
    config,
    ingest_thread,
    metric,
    metrics_text,
    publisher,
    query,
    stored_ids,
)
from tests.services import Broker, wait_for

FARM = "wire-farm"
# Per device: (kind, how many) it makes in the test.
MIX = (("detection", 12), ("telemetry", 6), ("event", 3), ("sample", 2), ("yield", 1))


@contextlib.contextmanager
def device(
    broker: Broker, tmp_path: Path, name: str, settings: wire.WireSettings
) -> Iterator[tuple[Outbox, MqttTransport]]:
    box = Outbox(tmp_path / f"{name}.db", budget_bytes=10**8)
    mqtt_settings = MqttSettings(host=broker.host, port=broker.port, reconnect_min_s=0.2, reconnect_max_s=1)
    transport = MqttTransport(mqtt_settings, f"{FARM}-{name}-{new_msg_id()[-6:].lower()}", wire_settings=settings)
    sender = Sender(box, transport, Identity(FARM, name), 64, wire_settings=settings)
    transport.start()
    sender.start()
    try:
        assert transport.wait_connected(15)
        yield box, transport
        assert sender.wait_idle(15), f"{name} did not drain its outbox"
    finally:
        sender.stop()
        transport.stop()
        box.close()


def messages_of(name: str) -> list[m.Envelope]:
    out: list[m.Envelope] = []
    for kind, n in MIX:
        out += [example_messages(FARM, name, fixed=False)[kind] for _ in range(n)]
    return out


def publish_raw(broker: Broker, topic: str, payload: bytes, content_type: str) -> None:
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = content_type
    with publisher(broker) as client:
        info = client.publish(topic, payload, qos=1, properties=props)
        info.wait_for_publish(15)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS


def test_json_cbor_and_batch_devices_share_one_ingest_and_each_message_is_stored_once(
    mqtt_broker: Broker, sqlite_url: str, tmp_path: Path
) -> None:
    forms = {
        "gw-json": wire.WireSettings(),
        "gw-cbor": wire.WireSettings(encoding="cbor", compress=False),
        "gw-batch": wire.WireSettings(encoding="cbor", batch_max_messages=8, batch_max_delay_s=0.3),
    }
    sent = {name: messages_of(name) for name in forms}
    statuses = {name: example_messages(FARM, name, fixed=False)["status"] for name in forms}
    with ingest_thread(config(sqlite_url, mqtt_broker)) as base, contextlib.ExitStack() as stack:
        for name, settings in forms.items():
            box, transport = stack.enter_context(device(mqtt_broker, tmp_path, name, settings))
            identity = Identity(FARM, name)
            box.add([to_out(identity, x) for x in sent[name]])
            # The retained status skips the outbox (edge_agent/daemon.py) and is encoded by the transport.
            transport.publish(identity.topic("status"), statuses[name].to_json(), qos=1, retain=True)
            if name == "gw-batch":
                # At-least-once: the same detections again (a resend after a lost PUBACK) in a new batch.
                again = [x for x in sent[name] if x.kind == "detection"][:5]
                wait_for(lambda b=box: b.stats()["depth"] == 0, 20, what="the first delivery")
                box.add([to_out(identity, x) for x in again])
        # A broker redelivering one batch twice, and a payload that is not CBOR: neither may hurt.
        dets = [x for x in sent["gw-cbor"] if x.kind == "detection"][:4]
        batch, ctype = wire.encode_batch([x.to_json() for x in dets], forms["gw-batch"])
        topic = device_topic(FARM, "gw-cbor", "detection")
        for payload, content_type in ((batch, ctype), (batch, ctype), (b"\xff\xfe", wire.CBOR)):
            publish_raw(mqtt_broker, topic, payload, content_type)

        expected = {x.msg_id for name in forms for x in sent[name]} | {s.msg_id for s in statuses.values()}
        wait_for(lambda: expected <= set(stored_ids(sqlite_url, FARM)), 30, what="every message stored")
        wait_for(lambda: metric(base, "cropwatch_ingest_dead_letters_total") >= 1, 15, what="the dead letter")
        forms_seen = (wire.JSON, wire.CBOR, wire.CBOR_ZSTD, wire.BATCH_CBOR_ZSTD)
        publishes = {ct: metric_for(base, ct) for ct in forms_seen}

    ids = stored_ids(sqlite_url, FARM)
    assert len(ids) == len(set(ids)) == len(expected), "each message exactly once"
    per_device = dict(
        query(sqlite_url, f"SELECT device_id, COUNT(*) FROM detections WHERE farm_id = '{FARM}' GROUP BY device_id")
    )
    assert per_device == {name: 12 for name in forms}
    assert query(sqlite_url, "SELECT reason FROM dead_letters") == [("invalid_cbor",)]
    # Each form really crossed the broker: samples and statuses alone, the rest in batches.
    assert publishes[wire.JSON] >= sum(n for _, n in MIX) + 1
    assert publishes[wire.CBOR] >= sum(n for _, n in MIX) + 1  # gw-cbor, one message each
    assert publishes[wire.CBOR_ZSTD] >= 2 + 1  # gw-batch's samples and status go alone, compressed
    assert 2 <= publishes[wire.BATCH_CBOR_ZSTD] < 12
    stored = {
        r[0]: r[1] for r in query(sqlite_url, "SELECT msg_id, label FROM detections WHERE device_id = 'gw-batch'")
    }
    assert all(stored[x.msg_id] == x.label for x in sent["gw-batch"] if x.kind == "detection")


def metric_for(base: str, content_type: str) -> float:
    for line in metrics_text(base).splitlines():
        if line.startswith(f'cropwatch_ingest_publishes_total{{content_type="{content_type}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
