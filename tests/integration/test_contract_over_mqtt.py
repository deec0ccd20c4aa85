"""Every message kind through a real broker with paho, MQTT v5, QoS 1, validated at the far end."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from shared import messages as m, topics
from shared.examples import example_messages
from tests.services import Broker, wait_for


def client(broker: Broker, client_id: str) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    connected = threading.Event()
    c.on_connect = lambda *_a: connected.set()
    c.connect(broker.host, broker.port, keepalive=30)
    c.loop_start()
    wait_for(connected.is_set, what=f"{client_id} to connect")
    return c


def parse_for_topic(topic: str, payload: bytes) -> m.Envelope:
    t = topics.parse_topic(topic)
    if t.category == "device":
        return m.parse_device_message(payload, expected_kind=t.kind)
    if t.category == "command":
        return m.parse_command(payload, expected_command=t.command)
    return m.parse_desired_model(payload)


def test_every_kind_crosses_a_real_broker_and_validates(mqtt_broker: Broker) -> None:
    farm, device = "it-farm", "gw-07"
    sent = example_messages(farm, device, fixed=False)
    received: dict[str, m.Envelope] = {}
    errors: list[str] = []
    lock = threading.Lock()

    sub = client(mqtt_broker, "it-sub")

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            parsed = parse_for_topic(msg.topic, msg.payload)
        except Exception as exc:  # the assertion below reports it
            errors.append(f"{msg.topic}: {exc}")
            return
        key = getattr(parsed, "command", None) or parsed.kind
        with lock:
            received[key] = parsed

    sub.on_message = on_message
    subscribed = threading.Event()
    sub.on_subscribe = lambda *_a: subscribed.set()
    sub.subscribe(
        [
            (f"cropwatch/v1/{farm}/+/+", mqtt.SubscribeOptions(qos=1)),
            (f"cropwatch/v1/{farm}/+/cmd/+", mqtt.SubscribeOptions(qos=1)),
            (f"cropwatch/v1/{farm}/_fleet/model/+", mqtt.SubscribeOptions(qos=1)),
        ]
    )
    wait_for(subscribed.is_set, what="SUBACK")

    pub = client(mqtt_broker, "it-pub")
    acks: list[int] = []
    pub.on_publish = lambda _c, _u, mid, rc, _p: acks.append(0 if not rc.is_failure else rc.value)
    for kind, msg in sent.items():
        if kind in m.DEVICE_KINDS:
            topic = topics.device_topic(farm, device, kind)
        elif kind == "desired_model":
            topic = topics.fleet_model_topic(farm, msg.model_name)
        else:
            topic = topics.command_topic(farm, device, kind)
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = "application/json"
        info = pub.publish(topic, msg.to_json(), qos=1, retain=kind in ("status", "desired_model"), properties=props)
        info.wait_for_publish(timeout=10)
        assert info.is_published()

    wait_for(lambda: len(received) == len(sent), timeout=15, what="every kind to arrive")
    assert not errors
    assert acks == [0] * len(sent), "every PUBACK carries a success reason code"
    for kind, msg in sent.items():
        assert received[kind] == msg, kind

    # Retained kinds are there for a late subscriber, as devices and the monitor rely on.
    late = client(mqtt_broker, "it-late")
    retained: dict[str, bytes] = {}
    late.on_message = lambda _c, _u, msg: retained.__setitem__(msg.topic, msg.payload) if msg.retain else None
    late.subscribe([(topics.device_topic(farm, device, "status"), 1), (f"cropwatch/v1/{farm}/_fleet/model/+", 1)])
    wait_for(lambda: len(retained) == 2, what="retained status and desired model")
    for c in (sub, pub, late):
        c.loop_stop()
        c.disconnect()
