"""The farm gateway through uplink outages: two real Mosquittos joined by the bridge ``cropwatch
gateway init`` generated (TLS with certificates from the PKI code), a real ingest at each end on
SQLite files, three agent-shaped devices (real outbox, sender and MQTT transport).

The uplink is cut with a TCP proxy between the bridge and the cloud's TLS port, so commands and a
rollout can be published in the cloud during the cut. Exactly once: the cloud database ends with
the gateway's rows, each once; commands arrive after the cut in order; the retained desired model
the devices end with is the latest.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from farm_monitor.app import queries
from farm_monitor.app.actions import label_sample
from farm_monitor.app.auth import User
from farm_monitor.db import make_engine
from farm_monitor.provision import Pki
from gateway.cli import main as gateway_main
from gateway.config import GatewayConfig
from gateway.health import HealthReporter
from shared.examples import example_messages
from shared.topics import command_topic, fleet_model_topic
from tests.gateway_helpers import Device, GatewayBroker, Proxy, Tap, publish_cloud, table
from tests.integration.ingest_helpers import config, ingest_thread, query, stored_ids
from tests.services import free_port, private_mosquitto, wait_for

FARM = "north"
BEFORE, DURING = 9, 30  # messages per device before and during the cut


def _setup_gateway(tmp: Path, cloud_tls_port: int) -> tuple[Proxy, GatewayBroker, int]:
    proxy = Proxy(cloud_tls_port)
    proxy.open()
    local, device_port = free_port(), free_port()
    rc = gateway_main(
        ["init", "--farm", FARM, "--cloud", f"mqtts://127.0.0.1:{proxy.port}", "--out", str(tmp / "gw"),
         "--pki", str(tmp / "pki"), "--install-dir", str(tmp / "gw"), "--state-dir", str(tmp / "gw-state"),
         "--local-port", str(local), "--device-port", str(device_port), "--gateway-host", "127.0.0.1",
         "--retry-max-s", "1", "--devices", "3"],
    )  # fmt: skip
    assert rc == 0
    (tmp / "gw-state" / "mosquitto").mkdir(parents=True)
    broker = GatewayBroker(tmp / "gw" / "mosquitto.conf", local, tmp / "gw-mosquitto.log")
    broker.start()
    return proxy, broker, device_port


def _rollout() -> bytes:
    return example_messages(FARM, "ops", fixed=False)["desired_model"].to_json()


def _start_health_reporter(tmp: Path, gw_url: str, port: int) -> tuple[threading.Event, threading.Thread]:
    cfg = GatewayConfig.model_validate(
        {"farm_id": FARM, "interval_s": 0.3, "disk_path": str(tmp), "labels_database": gw_url,
         "labels_cursor_file": str(tmp / "labels.cursor"),
         "mqtt": {"host": "127.0.0.1", "port": port, "reconnect_min_s": 0.2, "reconnect_max_s": 1}}
    )  # fmt: skip
    stop = threading.Event()
    thread = threading.Thread(target=HealthReporter(cfg).run, args=(stop,), daemon=True)
    thread.start()
    return stop, thread


def _publish_in_the_cloud(port: int) -> tuple[list[bytes], list[bytes]]:
    """During the cut: three commands to dev-0 (order matters) and two rollouts (the latest must win)."""
    cmds = [example_messages(FARM, "dev-0", fixed=False)["ping"].to_json() for _ in range(3)]
    rollouts = [_rollout(), _rollout()]
    topic = fleet_model_topic(FARM, "leaf-disease")
    publish_cloud(
        port, [(command_topic(FARM, "dev-0", "ping"), c, False) for c in cmds] + [(topic, r, True) for r in rollouts]
    )
    return cmds, rollouts


def _check_reports_labels_and_farms_page(cloud_url: str, gw_url: str) -> None:
    # The gateway's reports from the cut reached the cloud too: it saw the uplink down.
    cloud_sql = f"SELECT uplink FROM gateway_status WHERE farm_id = '{FARM}'"
    wait_for(lambda: {"down", "up"} <= {r[0] for r in query(cloud_url, cloud_sql)}, timeout=30,
             what="gateway_status reports of the cut in the cloud")  # fmt: skip
    label_sql = "SELECT msg_id, label, labelled_by FROM labels"
    wait_for(lambda: query(cloud_url, label_sql), timeout=30, what="the farm's label in the cloud")
    assert query(cloud_url, label_sql) == query(gw_url, label_sql)
    assert [r[1:] for r in query(cloud_url, label_sql)] == [("Tomato___Late_blight", "ann")]
    engine = make_engine(cloud_url)
    farms = queries.farm_gateways(queries.Sql(engine), queries.utcnow(), 1800.0)
    engine.dispose()
    assert list(farms["farm_id"]) == [FARM] and farms["state"][0] == "online"
    assert farms["detections"][0] == 3 * (BEFORE // 3 + DURING // 3)  # one message in three


@pytest.mark.parametrize("restart_gateway", [False, True], ids=["uplink-cut", "uplink-cut+gateway-restart"])
def test_outage_exactly_once_and_commands_after(tmp_path: Path, restart_gateway: bool) -> None:
    pki = Pki(tmp_path / "pki")
    pki.server_cert(["127.0.0.1"])
    tls_port = free_port()
    tls = [
        f"listener {tls_port} 127.0.0.1", f"cafile {pki.ca_cert_path}", f"certfile {tmp_path}/pki/server.crt",
        f"keyfile {tmp_path}/pki/server.key", "require_certificate true",
    ]  # fmt: skip
    with private_mosquitto(tmp_path / "cloud", tls) as cloud:
        # Devices provisioned for the cloud as usual: on the farm they use the same credentials
        # against the gateway's TLS listener (certificate, password, per-device ACL).
        creds = [pki.provision(FARM, f"dev-{i}", tmp_path / "devices", "127.0.0.1", 0).folder for i in range(3)]
        proxy, gw, device_port = _setup_gateway(tmp_path, tls_port)
        tap = Tap(cloud.port, FARM)
        gw_url, cloud_url = f"sqlite:///{tmp_path}/gateway.db", f"sqlite:///{tmp_path}/cloud.db"
        devices = [Device(FARM, f"dev-{i}", tmp_path, device_port, credentials=creds[i]) for i in range(3)]
        stop_health, health_thread = _start_health_reporter(tmp_path, gw_url, gw.port)
        try:
            with ingest_thread(config(gw_url, gw)), ingest_thread(config(cloud_url, cloud)):
                for d in devices:
                    d.start()
                    d.produce(BEFORE)
                sample_id = devices[0].produce_sample()
                sent = lambda: {m for d in devices for m in d.sent}  # noqa: E731
                wait_for(lambda: set(stored_ids(cloud_url)) >= sent(), timeout=30, what="before the cut: cloud")

                proxy.cut()
                for d in devices:
                    d.produce(DURING)
                cut_sent = {m for d in devices for m in d.sent} - set(stored_ids(cloud_url))
                cmds, rollouts = _publish_in_the_cloud(cloud.port)
                # A label made in the farm's own monitor during the cut.
                gw_engine = make_engine(gw_url)
                label_sample(gw_engine, User("ann", "agronomist", ("*",)), sample_id, "Tomato___Late_blight")
                gw_engine.dispose()
                if restart_gateway:
                    wait_for(lambda: sum(d.pending() for d in devices) == 0, timeout=30, what="devices to hand over")
                    gw.stop()
                    gw.start()
                wait_for(lambda: set(stored_ids(gw_url)) >= sent(), timeout=30, what="during the cut: gateway DB")
                cloud_during = set(stored_ids(cloud_url)) & cut_sent
                assert not cloud_during, "the uplink was cut, yet the cloud stored messages of the cut"
                assert devices[0].commands == []

                proxy.open()
                wait_for(lambda: sorted(stored_ids(cloud_url)) == sorted(stored_ids(gw_url)), timeout=45,
                         what="after the cut: cloud DB == gateway DB")  # fmt: skip
                wait_for(lambda: len(devices[0].commands) == 3, timeout=30, what="commands after the cut")
                wait_for(lambda: all(d.models and d.models[-1][0] == rollouts[-1].decode() for d in devices),
                         timeout=30, what="latest rollout on every device")  # fmt: skip
                late = Device(FARM, "dev-late", tmp_path, gw.port)
                late.start()
                wait_for(lambda: late.models, timeout=15, what="a new device to get the retained model")
                late.stop()
                _check_reports_labels_and_farms_page(cloud_url, gw_url)
        finally:
            stop_health.set()
            health_thread.join(10)
            for d in devices:
                d.stop()
            tap.stop()
            gw.stop()
            proxy.cut()

        assert devices[0].commands == [c.decode() for c in cmds], "commands reordered"
        assert late.models[-1] == (rollouts[-1].decode(), True), "retained desired model is not the latest"
        gw_ids, cloud_ids, all_sent = stored_ids(gw_url), stored_ids(cloud_url), sent()
        assert len(gw_ids) == len(set(gw_ids)) and len(cloud_ids) == len(set(cloud_ids))
        assert set(gw_ids) == set(cloud_ids) == all_sent
        row = {
            "scenario": "cut+gateway restart" if restart_gateway else "uplink cut",
            "sent": len(all_sent), "during cut": len(cut_sent), "gateway DB": len(set(gw_ids)),
            "cloud DB": len(set(cloud_ids)), "bridge dups": sum(c - 1 for c in tap.counts.values()),
            "lost": len(all_sent - set(cloud_ids)), "cmds after": f"{len(devices[0].commands)}/3 in order",
            "farm label": f"{len(query(cloud_url, 'SELECT msg_id FROM labels'))}/1 in cloud",
            "rollout": "latest" if late.models[-1][0] == rollouts[-1].decode() else "stale",
        }  # fmt: skip
        print("\n" + table([row]))
