"""``cropwatch notify``'s service against real receivers: an SMTP server (aiosmtpd), and one HTTP server
answering a generic JSON webhook, ntfy and the Telegram Bot API. Time is an injected clock, so quiet
hours, escalation, the rate cap and retries run in a second.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from farm_monitor import acklink
from farm_monitor.db.notifications import use_ack_link
from farm_monitor.notify.service import NotifyService
from tests.notify_world import (
    SECRET,
    Mailbox,
    Receiver,
    add_sample,
    jpeg_of,
    payload,
    raise_alert,
    resolve_alert,
    subscribe,
    world,
)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    server = rec.serve()
    yield rec
    server.shutdown()


def _ledger(engine) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text("SELECT event, state FROM notification_deliveries ORDER BY id"))]


def test_every_channel_gets_one_message_with_the_picture_then_the_resolved_notice(
    tmp_path: Path, sqlite_url: str, receiver: Receiver
) -> None:
    cfg, engine = world(tmp_path, sqlite_url, telegram_api_url=f"http://127.0.0.1:{receiver.port}")
    add_sample(cfg, engine, "north", "Tomato___Late_blight")
    now = datetime.now(UTC).replace(microsecond=0)
    clock = Clock(now)
    with Mailbox() as mailbox:
        subscribe(engine, "agro", [
            mailbox.url("agro@farm.test"), receiver.json_url("/hook"), f"ntfy://127.0.0.1:{receiver.port}/north",
            "tgram://123456:ABCdef/9876",
        ])  # fmt: skip
        alert_id = raise_alert(cfg, engine, "disease:farm-a:north:Tomato___Late_blight", now)
        service = NotifyService(cfg, engine, clock=clock, worker="w1")
        stats = service.tick()
        assert stats.sent == 4, stats

        (mail,) = mailbox.mails
        assert "Tomato" in mail["Subject"] and "north" in mail["Subject"] and "WARNING" in mail["Subject"]
        text_part = next(p for p in mail.walk() if p.get_content_type() == "text/plain").get_payload(decode=True)
        body = text_part.decode()
        assert "Disease: Tomato · Late blight" in body and "Share: 80% (24/30 detections)" in body
        assert "Monitor: http://monitor.test:8501/alerts" in body
        ack_url = next(line for line in body.splitlines() if line.startswith("Acknowledge: ")).split(" ", 1)[1]
        images = [p for p in mail.walk() if p.get_content_type() == "image/jpeg"]
        assert len(images) == 1 and max(jpeg_of(images[0].get_payload(decode=True))) == 320

        (hook,) = receiver.delivered("/hook")
        doc = payload(hook)
        assert "Share: 80%" in doc["message"] and "Tomato" in doc["title"]
        assert max(jpeg_of(base64.b64decode(doc["attachments"][0]["base64"]))) == 320
        (ntfy,) = receiver.delivered("/north")
        assert ntfy.body[:2] == b"\xff\xd8" and "Share" in ntfy.path  # the picture is the body, text in the query
        tg = receiver.delivered("/bot123456:ABCdef/")
        assert [r.path.rsplit("/", 1)[1] for r in tg] == ["sendPhoto"]
        assert b"9876" in tg[0].body and b"\xff\xd8" in tg[0].body and b"Late blight" in tg[0].body

        assert service.tick().sent == 0  # once: a second round sends nothing
        resolve_alert(engine, "disease:farm-a:north:Tomato___Late_blight", now + timedelta(minutes=5))
        clock.now += timedelta(minutes=6)
        assert service.tick().sent == 4
        assert len(mailbox.mails) == 2 and "RESOLVED" in mailbox.mails[1]["Subject"]
        assert not [p for p in mailbox.mails[1].walk() if p.get_content_type() == "image/jpeg"]
        assert "RESOLVED" in payload(receiver.delivered("/hook")[1])["title"]
    assert sorted(_ledger(engine)) == sorted([("raised", "sent")] * 4 + [("resolved", "sent")] * 4)

    # the link acknowledges as agro, once; altered or expired links are refused
    token = ack_url.split("?ack=", 1)[1]
    claim = acklink.verify(SECRET, token, now)
    assert (claim.alert_id, claim.username) == (alert_id, "agro")
    with engine.begin() as conn:
        assert use_ack_link(conn, claim.delivery_id, claim.alert_id, claim.username, now) == "acknowledged"
        assert use_ack_link(conn, claim.delivery_id, claim.alert_id, claim.username, now) == "used"
    with pytest.raises(acklink.AckLinkError, match="altered"):
        acklink.verify(SECRET, token[:-2] + ("AA" if token[-2:] != "AA" else "BB"), now)
    with pytest.raises(acklink.AckLinkError, match="expired"):
        acklink.verify(SECRET, token, now + timedelta(hours=73))


def test_quiet_hours_escalation_rate_cap_digest_and_dead_delivery(
    tmp_path: Path, sqlite_url: str, receiver: Receiver
) -> None:
    cfg, engine = world(tmp_path, sqlite_url, escalate_after_min=60, rate_cap_per_hour=2, max_attempts=2,
                        retry_base_s=10)  # fmt: skip
    night = datetime(2026, 12, 3, 22, 0, tzinfo=UTC)  # 23:00 in Berlin
    clock = Clock(night)
    subscribe(engine, "agro", [receiver.json_url("/quiet")], timezone="Europe/Berlin", quiet_start="22:00",
              quiet_end="06:30")  # fmt: skip
    subscribe(engine, "farmer-a", [receiver.json_url("/oncall")], min_severity="critical")
    service = NotifyService(cfg, engine, clock=clock, worker="w1")

    raise_alert(cfg, engine, "k-warn", night, "warning")
    raise_alert(cfg, engine, "k-crit", night, "critical", rule="device_offline", field_id=None)
    stats = service.tick()
    assert stats.deferred == 1  # the warning waits for the morning; the critical one overrides quiet hours
    assert ["CRITICAL" in payload(r)["title"] for r in receiver.delivered("/quiet")] == [True]
    assert len(receiver.delivered("/oncall")) == 1  # critical-only subscriber: just the critical one

    clock.now = night + timedelta(minutes=61)  # nobody acknowledged: escalation, one level up
    service.tick()
    oncall = [payload(r)["title"] for r in receiver.delivered("/oncall")]
    assert len(oncall) == 3 and all("ESCALATED" in t and "CRITICAL" in t for t in oncall[1:])
    assert any("Tomato" in t for t in oncall[1:])  # the warning, bumped to critical, reaches critical-only
    # agro at night: both escalations are critical now, so they override quiet hours; the warning waits
    assert len(receiver.delivered("/quiet")) == 3

    clock.now = datetime(2026, 12, 4, 5, 31, tzinfo=UTC)  # 06:31 in Berlin: quiet hours over
    service.tick()
    titles = [payload(r)["title"] for r in receiver.delivered("/quiet")]
    assert len(titles) == 4 and "WARNING" in titles[3] and "ESCALATED" not in titles[3]

    # rate cap 2 per hour: five more alerts, one goes out, four are held for one digest
    for i in range(5):
        raise_alert(cfg, engine, f"k-burst-{i}", clock.now, "warning", field_id=f"f{i}")
    assert service.tick().held == 4
    assert len(receiver.delivered("/quiet")) == 5
    clock.now += timedelta(minutes=61)
    before = len(receiver.delivered("/quiet"))
    service.tick()
    new = [payload(r) for r in receiver.delivered("/quiet")[before:]]
    digests = [d for d in new if "digest" in d["title"]]
    assert len(digests) == 1 and digests[0]["message"].count(" #") == 4, new
    # the digest went first; the burst's escalations (60 min unacknowledged) then meet the cap again
    assert "digest" in new[0]["title"] and len(new) == 2

    # a failing channel: retried with backoff, then dead (recorded, shown on the monitor)
    receiver.fail_paths.add("/broken")
    subscribe(engine, "agro", [receiver.json_url("/broken")], min_severity="critical")
    raise_alert(cfg, engine, "k-crit-2", clock.now, "critical", rule="device_offline", field_id=None)
    failed = service.tick().failed  # the new alert and the open criticals' escalations
    assert failed >= 1
    assert service.tick().failed == 0  # not due yet: the backoff holds
    clock.now += timedelta(seconds=11)
    assert service.tick().dead == failed
    with engine.connect() as conn:
        dead = conn.execute(text("SELECT attempts, last_error FROM notification_deliveries WHERE state = 'dead'")).all()
    assert len(dead) == failed and all(n == 2 and "500" in err and str(receiver.port) not in err for n, err in dead)
    assert len(receiver.delivered("/broken")) == 0


def test_check_config_reads_the_secret_from_a_file_and_prints_it_redacted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from farm_monitor.notify.cli import main

    secret = tmp_path / "ack.secret"
    secret.write_text("a-very-secret-ack-key-0123456789\n")
    config = tmp_path / "monitor.toml"
    config.write_text(f'[notify]\nack_secret_file = "{secret}"\nrate_cap_per_hour = 5\n')
    assert main(["--config", str(config), "--check-config"]) == 0
    out = capsys.readouterr().out
    assert '"ack_secret": "**********"' in out and "a-very-secret" not in out and '"rate_cap_per_hour": 5' in out
    config.write_text('[notify]\nack_secret = "short"\n')
    assert main(["--config", str(config), "--check-config"]) == 2
    assert "ack_secret needs at least 16 characters" in capsys.readouterr().err
