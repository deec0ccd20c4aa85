"""The LoRaWAN bridge end to end with real parts.

Documented ChirpStack v4 and TTS v3 uplinks (tests/fixtures/lorawan) are published on a private
Mosquitto standing in for the network server's broker; the bridge converts them and publishes to a
second private Mosquitto (the Cropwatch broker, with a password file and the ACL the bridge prints
for its user), where a real ingest stores them in SQLite.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bridges.lorawan.config import LorawanConfig, acl_lines
from bridges.lorawan.service import Bridge
from farm_monitor.provision import mosquitto_password_hash
from shared.ids import utcnow
from tests.integration.ingest_helpers import config as ingest_config, ingest_thread, publish_all, query
from tests.lorawan_helpers import CHIRPSTACK_EUI, chirpstack_up, config_doc, tts_up
from tests.services import Broker, private_mosquitto, puback_code, wait_for

pytestmark = pytest.mark.integration

BRIDGE_USER = "cropwatch-bridge-lorawan"
BRIDGE_PASSWORD = "bridge-secret"


@dataclass
class Rig:
    ns: Broker
    cw: Broker
    db_url: str
    tmp: Path

    def config(self, fmt: str, doc: dict[str, Any] | None = None) -> LorawanConfig:
        doc = doc or config_doc(fmt)
        doc["network_server"].update(host=self.ns.host, port=self.ns.port, reconnect_min_s=0.2, reconnect_max_s=1)
        doc["cropwatch"].update(
            host=self.cw.host, port=self.cw.port, username=BRIDGE_USER, password=BRIDGE_PASSWORD,
            reconnect_min_s=0.2, reconnect_max_s=1,
        )  # fmt: skip
        return LorawanConfig.model_validate(doc)


def _cropwatch_broker_lines(tmp: Path) -> list[str]:
    """Password file with the bridge's user; the ACL: anonymous (ingest here) reads, the bridge writes its devices."""
    passwd = tmp / "passwd"
    passwd.write_text(f"{BRIDGE_USER}:{mosquitto_password_hash(BRIDGE_PASSWORD)}\n")
    acl = tmp / "acl"
    acl.write_text("topic read cropwatch/v1/+/+/+\n\n" + acl_lines(LorawanConfig.model_validate(config_doc())))
    return ["allow_anonymous true", f"password_file {passwd}", f"acl_file {acl}"]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with (
        private_mosquitto(tmp_path / "ns") as ns,
        private_mosquitto(tmp_path / "cw", _cropwatch_broker_lines(tmp_path)) as cw,
    ):
        url = f"sqlite:///{tmp_path / 'monitor.db'}"
        with ingest_thread(ingest_config(url, cw)):
            yield Rig(ns, cw, url, tmp_path)


@contextlib.contextmanager
def running(cfg: LorawanConfig, wall: Callable[[], datetime] = utcnow) -> Iterator[Bridge]:
    bridge = Bridge(cfg, wall)
    bridge.start()
    try:
        wait_for(bridge.ready, timeout=15, what="the bridge to connect to both brokers")
        yield bridge
    finally:
        bridge.stop()


def _cs_topic(eui: str) -> str:
    return f"application/17c82e96-be03-4f38-aef3-f83d48582d97/device/{eui}/event/up"


def _tts_topic() -> str:
    return "v3/app1@tenant1/devices/dev1/up"


def _readings(url: str, device: str) -> list[tuple[Any, ...]]:
    return query(
        url,
        "SELECT msg_id, quantity, value, unit, field_id FROM telemetry "
        f"WHERE device_id = '{device}' ORDER BY msg_id, reading_index",
    )


def _msg_ids(url: str, device: str) -> set[str]:
    return {row[0] for row in _readings(url, device)}


def test_chirpstack_uplinks_are_stored_once_and_bad_ones_survived(rig: Rig) -> None:
    a = json.dumps(chirpstack_up(f_cnt=10)).encode()
    b = json.dumps(chirpstack_up(f_cnt=11, leaf_gadget=1.0)).encode()
    no_object = json.dumps({k: v for k, v in chirpstack_up(f_cnt=12).items() if k != "object"}).encode()
    with running(rig.config("chirpstack")) as bridge:
        publish_all(
            rig.ns,
            [
                (_cs_topic(CHIRPSTACK_EUI), a),
                (_cs_topic(CHIRPSTACK_EUI), a),  # the same uplink again: dropped from memory
                (_cs_topic(CHIRPSTACK_EUI), b"{this is not json"),
                (_cs_topic("ffffffffffffffff"), json.dumps(chirpstack_up(dev_eui="ffffffffffffffff")).encode()),
                (_cs_topic(CHIRPSTACK_EUI), no_object),
                (_cs_topic(CHIRPSTACK_EUI), b),
            ],
        )
        wait_for(lambda: bridge.counters["uplinks"] == 6 and bridge.counters["published"] == 2, what="6 uplinks")
        c = bridge.counters
        assert (c["duplicates"], c["invalid_json"], c["unknown_device"], c["no_decoded_object"]) == (1, 1, 1, 1)
        assert c["unknown_field"] == 1 and c["publish_refused"] == 0
        wait_for(lambda: len(_msg_ids(rig.db_url, "lora-soil-1")) == 2, timeout=20, what="two uplinks stored")

    rows = _readings(rig.db_url, "lora-soil-1")
    assert len(rows) == 8  # 4 mapped fields per uplink; Mod ignored, leaf_gadget unknown
    first = {q: (v, u, f) for _, q, v, u, f in rows[:4]}
    assert first["soil_ec"] == (pytest.approx(0.48), "dS m-1", "north")
    assert first["battery_voltage"] == (3.61, "V", "north")

    # A fresh bridge has forgotten everything: the replayed uplink is published again, and ingest's
    # idempotence on the derived msg_id stores it once. The next uplink marks that it got through.
    with running(rig.config("chirpstack")) as bridge:
        publish_all(rig.ns, [(_cs_topic(CHIRPSTACK_EUI), a), (_cs_topic(CHIRPSTACK_EUI), b"\x00\xff")])
        publish_all(rig.ns, [(_cs_topic(CHIRPSTACK_EUI), json.dumps(chirpstack_up(f_cnt=13)).encode())])
        wait_for(lambda: bridge.counters["published"] == 2, what="the replay and the marker published")
        wait_for(lambda: len(_msg_ids(rig.db_url, "lora-soil-1")) == 3, timeout=20, what="the marker stored")
    assert len(_readings(rig.db_url, "lora-soil-1")) == 12


def test_tts_uplinks_are_stored_under_the_mapped_device(rig: Rig) -> None:
    up = json.dumps(tts_up(f_cnt=7)).encode()
    with running(rig.config("tts")) as bridge:
        publish_all(rig.ns, [(_tts_topic(), up), (_tts_topic(), up), (_tts_topic(), b"[]")])
        wait_for(lambda: bridge.counters["uplinks"] == 3 and bridge.counters["published"] == 1, what="3 uplinks")
        assert bridge.counters["duplicates"] == 1 and bridge.counters["bad_uplink"] == 1
        wait_for(lambda: _msg_ids(rig.db_url, "lora-soil-2"), timeout=20, what="the TTS uplink stored")
    values = {q: v for _, q, v, _, _ in _readings(rig.db_url, "lora-soil-2")}
    assert values == pytest.approx(
        {"soil_temperature": 22.8, "soil_moisture": 31.8, "soil_ec": 1.2, "battery_voltage": 3.59}
    )


def test_bridge_user_may_publish_only_for_mapped_devices(rig: Rig) -> None:
    assert puback_code(rig.cw, BRIDGE_USER, BRIDGE_PASSWORD, "cropwatch/v1/lora-farm/lora-soil-1/telemetry") == 0
    assert (
        puback_code(rig.cw, BRIDGE_USER, BRIDGE_PASSWORD, "cropwatch/v1/lora-farm/gw-01/telemetry") == 135
    )  # not authorised
    assert puback_code(rig.cw, BRIDGE_USER, BRIDGE_PASSWORD, "cropwatch/v1/lora-farm/lora-soil-1/status") == 135

    # A device added to the bridge's map but not to the broker's ACL: refused, counted, not stored.
    doc = config_doc("chirpstack")
    doc["devices"].append(
        {"dev_eui": "0202020202020202", "farm": "lora-farm", "device": "not-in-acl", "model": "soil-probe"}
    )
    with running(rig.config("chirpstack", doc)) as bridge:
        publish_all(rig.ns, [(_cs_topic("0202020202020202"), json.dumps(chirpstack_up("0202020202020202")).encode())])
        wait_for(lambda: bridge.counters["publish_refused"] == 1, what="the refused publish counted")
    assert not _msg_ids(rig.db_url, "not-in-acl")


def _health_alerts(url: str, device: str) -> dict[str, bool]:
    """dedup key's sensor:quantity:state -> whether the alert is still open."""
    sql = f"SELECT dedup_key, resolved_at FROM alerts WHERE rule = 'sensor_health' AND device_id = '{device}'"
    rows = query(url, sql)
    return {key.split(":", 3)[3]: resolved is None for key, resolved in rows}


def test_sensor_health_flags_raise_and_resolve_alerts_and_silence_is_flagged(rig: Rig) -> None:
    now = [utcnow()]
    doc = config_doc("chirpstack")
    doc["bridge"].update(interval_s=60, missing_after=2, check_every_s=0.05)
    bad = chirpstack_up(f_cnt=30, time="2026-05-01T10:00:00+00:00", water_SOIL=140.0)
    good = chirpstack_up(f_cnt=31, time="2026-05-01T10:15:00+00:00", water_SOIL=30.0)
    with running(rig.config("chirpstack", doc), wall=lambda: now[0]) as bridge:
        publish_all(rig.ns, [(_cs_topic(CHIRPSTACK_EUI), json.dumps(bad).encode())])
        channel = "water_soil:soil_moisture:out_of_range"
        wait_for(lambda: _health_alerts(rig.db_url, "lora-soil-1") == {channel: True}, timeout=20, what="alert raised")
        publish_all(rig.ns, [(_cs_topic(CHIRPSTACK_EUI), json.dumps(good).encode())])
        wait_for(lambda: _health_alerts(rig.db_url, "lora-soil-1") == {channel: False}, timeout=20, what="resolved")
        assert len(_msg_ids(rig.db_url, "lora-soil-1")) == 2  # the flagged reading was stored too

        # Two intervals without an uplink: the timer publishes the missing flags, no readings.
        now[0] += timedelta(seconds=121)
        missing = "water_soil:soil_moisture:missing"
        wait_for(lambda: _health_alerts(rig.db_url, "lora-soil-1").get(missing), timeout=20, what="missing alert")
        wait_for(lambda: bridge.counters["missing_messages"] == 2, what="both silent devices flagged")
        assert len(_msg_ids(rig.db_url, "lora-soil-1")) == 2
        assert bridge.counters["publish_refused"] == 0
