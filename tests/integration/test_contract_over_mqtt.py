"""Every message kind through a real broker with paho, MQTT v5, QoS 1, validated at the far end.

Device messages go in every wire form (shared/wire.py): the far end decodes by the content type the
broker hands on with each message.
"""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from shared import messages as m, topics, wire
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


def parse_for_topic(topic: str, payload: bytes, content_type: str | None = None) -> list[m.Envelope]:
    """The contract check: every message of one PUBLISH, decoded by its content type."""
    t = topics.parse_topic(topic)
    if t.category == "device":
        return wire.decode_one(payload, content_type, expected_kind=t.kind)
    if wire.base_type(content_type) != wire.JSON:
        raise AssertionError(f"cloud-to-device messages are JSON, got {content_type}")
    return [_parse_cloud(t, payload)]


def _parse_cloud(t: topics.Topic, payload: bytes) -> m.Envelope:
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
            parsed = parse_for_topic(msg.topic, msg.payload, getattr(msg.properties, "ContentType", None))
        except Exception as exc:  # the assertion below reports it
            errors.append(f"{msg.topic}: {exc}")
            return
        with lock:
            for one in parsed:
                key = getattr(one, "command", None) or one.kind
                form = getattr(msg.properties, "ContentType", wire.JSON)
                received[key if form == wire.JSON else f"{key} as {form}"] = one

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
        forms = [(msg.to_json(), wire.JSON)]
        if kind in m.DEVICE_KINDS:
            forms.append(wire.encode(msg, wire.WireSettings(encoding="cbor", compress=False)))
            forms.append(wire.encode(msg, wire.WireSettings(encoding="cbor")))
            for compress in (False, True):
                batch = wire.WireSettings(encoding="cbor", batch_max_messages=2, compress=compress)
                forms.append(wire.encode_batch([msg.to_json()], batch))
        for payload, content_type in forms:
            props = Properties(PacketTypes.PUBLISH)
            props.ContentType = content_type
            props.PayloadFormatIndicator = wire.payload_format(content_type)
            retain = kind in ("status", "desired_model") and content_type == wire.JSON
            info = pub.publish(topic, payload, qos=1, retain=retain, properties=props)
            info.wait_for_publish(timeout=10)
            assert info.is_published()

    expected = len(sent) + 4 * len(m.DEVICE_KINDS)
    wait_for(lambda: len(received) == expected, timeout=15, what="every kind in every form to arrive")
    assert not errors
    assert acks == [0] * expected, "every PUBACK carries a success reason code"
    for kind, msg in sent.items():
        assert received[kind] == msg, kind
        if kind in m.DEVICE_KINDS:
            for form in (wire.CBOR, wire.COMPRESSED, wire.BATCH_CBOR, wire.BATCH_COMPRESSED):
                assert received[f"{kind} as {form}"] == msg, (kind, form)

    # Retained kinds are there for a late subscriber, as devices and the monitor rely on.
    late = client(mqtt_broker, "it-late")
    retained: dict[str, bytes] = {}
    late.on_message = lambda _c, _u, msg: retained.__setitem__(msg.topic, msg.payload) if msg.retain else None
    late.subscribe([(topics.device_topic(farm, device, "status"), 1), (f"cropwatch/v1/{farm}/_fleet/model/+", 1)])
    wait_for(lambda: len(retained) == 2, what="retained status and desired model")
    for c in (sub, pub, late):
        c.loop_stop()
        c.disconnect()
