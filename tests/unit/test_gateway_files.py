"""What `cropwatch gateway init` writes: the bridge's topics (no loop), queue sizing, the cloud ACL block."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.files import GatewayInitError, bridge_topics, parse_cloud_url
from gateway.sizing import Fleet, queue_size


def test_bridge_topics_are_disjoint_so_nothing_loops() -> None:
    from paho.mqtt.client import topic_matches_sub

    lines = [t.split() for t in bridge_topics("north")]
    outs = [p for _, p, d, _ in lines if d == "out"]
    ins = [p for _, p, d, _ in lines if d == "in"]
    assert all(q == "1" for *_, q in lines)
    for topic in ("cropwatch/v1/north/dev-1/cmd/ping", "cropwatch/v1/north/_fleet/model/leaf",
                  "cropwatch/v1/north/_fleet/shadow/leaf"):  # fmt: skip
        assert any(topic_matches_sub(i, topic) for i in ins) and not any(topic_matches_sub(o, topic) for o in outs)
    for topic in ("cropwatch/v1/north/dev-1/detection", "cropwatch/v1/north/gateway/gateway_status"):
        assert any(topic_matches_sub(o, topic) for o in outs) and not any(topic_matches_sub(i, topic) for i in ins)
    assert not any(topic_matches_sub(o, "cropwatch/v1/south/dev-1/detection") for o in outs)


def test_queue_sizing_formula() -> None:
    q = queue_size(Fleet(devices=10, messages_per_hour=60, message_bytes=1000, samples_per_day=0, offline_days=7,
                         margin=0))  # fmt: skip
    assert q.messages == 10 * 60 * 24 * 7
    assert q.bytes == q.messages * 1000
    assert q.memory_bytes > q.bytes
    assert queue_size(Fleet(offline_days=14)).bytes == pytest.approx(2 * queue_size(Fleet(offline_days=7)).bytes, 1e-6)


def test_cloud_url_errors_name_the_fix() -> None:
    assert parse_cloud_url("mqtts://broker.example.org").port == 8883
    with pytest.raises(GatewayInitError, match="mqtts://HOST:PORT"):
        parse_cloud_url("http://broker")


def test_init_writes_bridge_units_and_the_cloud_acl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, pki = tmp_path / "out", tmp_path / "pki"
    assert main(["init", "--farm", "north", "--cloud", "mqtts://cloud.example.org:8883", "--out", str(out),
                 "--pki", str(pki), "--devices", "50", "--offline-days", "7"]) == 0  # fmt: skip
    conf = (out / "mosquitto.conf").read_text()
    for line in ("connection cloud", "address cloud.example.org:8883", "cleansession false", "persistence true",
                 "remote_username _gateway.north", "topic cropwatch/v1/north/+/+ out 1",
                 f"max_queued_bytes {queue_size(Fleet(devices=50)).bytes}"):  # fmt: skip
        assert line in conf.splitlines()
    assert (out / "mosquitto.conf").stat().st_mode & 0o077 == 0, "the bridge password must not be world-readable"
    assert "gateway-north.acl" in (pki / "mosquitto.acl").read_text()
    assert "user _gateway.north\ntopic write cropwatch/v1/north/+/+" in (pki / "mosquitto.acl").read_text()
    assert {p.name for p in (out / "systemd").iterdir()} >= {"cropwatch-gateway-broker.service",
                                                          "cropwatch-gateway-health.service"}  # fmt: skip
    assert "profiles: [gateway]" in (out / "compose.yaml").read_text()
    assert 'url = "sqlite:///' in (out / "monitor.toml").read_text()
    capsys.readouterr()
    assert main(["health", "--config", str(out / "gateway.toml"), "--check-config"]) == 0
    assert '"labels_database": "sqlite:///' in capsys.readouterr().out
    assert main(["init", "--farm", "North", "--cloud", "mqtt://x", "--out", str(out)]) == 2
    assert "--farm 'North'" in capsys.readouterr().err
    assert main(["init", "--farm", "north", "--cloud", "mqtts://x", "--out", str(tmp_path / "o2")]) == 2
    assert "--pki" in capsys.readouterr().err
