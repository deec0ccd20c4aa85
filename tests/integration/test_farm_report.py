"""The farm report over a real SQLite file seeded by ingest's code: its numbers, its PDF (rendered to
PNG with pypdfium2, kept in test-artifacts/report/), and its mail through a real SMTP server
(aiosmtpd, in process), once per subscriber and period."""

from __future__ import annotations

import email
import io
import threading
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from pathlib import Path

import numpy as np
import pypdfium2 as pdfium
import pytest
from aiosmtpd.controller import Controller
from PIL import Image
from sqlalchemy import text
from streamlit.testing.v1 import AppTest

from farm_monitor.app.report_cli import main as report_main
from farm_monitor.db import make_engine, migrate
from farm_monitor.db.notifications import SubscriptionSpec, save_subscription
from farm_monitor.layout import load_layout
from farm_monitor.report import (
    ReportSubscription,
    build_farm_report,
    deliver_due_reports,
    due_period,
    load_report_subscriptions,
)
from farm_monitor.report.build import FarmReport
from tests.monitor_seed import World, seed
from tests.services import free_port, wait_for

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "report"
APP = Path(__file__).resolve().parents[2] / "farm_monitor" / "app"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return seed(tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def weekly(world: World) -> FarmReport:
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    cfg = world.config
    return build_farm_report(
        make_engine(cfg.database), "farm-a", end - timedelta(days=7), end, "http://monitor.example:8501",
        layout=load_layout(cfg.app.farm_file), rule=cfg.alerts.disease,
    )  # fmt: skip


class Inbox:
    """An aiosmtpd handler keeping every message it accepts (and whom it was for)."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        self.messages.append((list(envelope.rcpt_tos), envelope.content))  # type: ignore[attr-defined]
        return "250 OK"


@pytest.fixture
def smtp() -> tuple[Inbox, int]:
    inbox, port = Inbox(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


def test_report_numbers_match_the_seed(weekly: FarmReport) -> None:
    (data,) = weekly.farms
    # 3 devices x 30 detections: north (gw-a1) 8 in 10 sick, south (gw-a2, gw-a3) 1 in 10.
    assert data.class_totals() == {"Tomato · Healthy": 60, "Tomato · Late blight": 30}
    risk = {f.field_id: (f.level, f.n, f.sick) for f in data.fields}
    assert risk == {"north": ("high", 30, 24), "south": ("low", 60, 6)}
    assert sorted(a.rule for a in data.alerts) == ["device_offline", "disease", "sensor_health"]
    assert {d.device_id: d.status for d in data.devices} == {"gw-a1": "online", "gw-a2": "offline", "gw-a3": "online"}
    assert {(y.field_id, y.p10, y.p50, y.p90) for y in data.yields} == {("north", 59, 69, 79), ("south", 59, 69, 79)}
    ec = next(s for s in data.sensors if s.quantity == "soil_ec")
    assert (ec.field_id, ec.unit, ec.low, ec.high) == ("north", "dS m-1", 31.5, 33.5)
    assert {s.quantity for s in data.sensors} == {"air_temperature", "soil_ec", "soil_moisture"}
    # The same numbers in the mail's HTML, beside the charts; nothing of the other farm.
    for needle in ("Tomato · Late blight", "80%", "gw-a2 has been offline", "69.0 t/ha", "59.0–79.0", "offline"):
        assert needle in weekly.html.replace("&#x27;", "'"), needle
    assert "secret" not in weekly.html + weekly.text
    assert weekly.subject.startswith("Cropwatch weekly report · farm-a") and "3 open alerts" in weekly.subject


def test_every_chart_is_a_png_the_html_shows_by_cid(weekly: FarmReport) -> None:
    names = {cid.partition(".")[0] for cid in weekly.images}
    assert names == {"map", "detections", "alerts", "devices", "sensors", "yield"}
    for cid, png in weekly.images.items():
        img = Image.open(io.BytesIO(png))
        assert img.format == "PNG" and img.width > 300 and img.height > 150, cid
        assert len(np.unique(np.asarray(img.convert("L")))) > 10, f"{cid} is blank"  # something was drawn
        assert f'src="cid:{cid}"' in weekly.html
    assert weekly.html.index("cid:map.") < weekly.html.index("cid:yield.")  # map first


def test_pdf_renders_and_says_the_numbers(weekly: FarmReport) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    doc = pdfium.PdfDocument(weekly.pdf)
    try:
        assert len(doc) == 3
        words = ""
        for i, page in enumerate(doc):
            image = page.render(scale=1.5).to_pil()
            image.save(ARTIFACTS / f"weekly-farm-a-page{i + 1}.png")
            assert len(np.unique(np.asarray(image.convert("L")))) > 50
            textpage = page.get_textpage()
            words += textpage.get_text_range()
            textpage.close()
            page.close()
    finally:
        doc.close()
    for needle in ("Fields and disease risk", "Late blight", "gw-a2", "69.0 t/ha", "soil ec (dS m-1)"):
        assert needle in words, needle
    (ARTIFACTS / "weekly-farm-a.pdf").write_bytes(weekly.pdf)


def _parts(raw: bytes) -> tuple[EmailMessage, str, dict[str, bytes], list[str]]:
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    related = next(p for p in msg.walk() if p.get_content_type() == "multipart/related")
    html = next(p for p in related.iter_parts() if p.get_content_type() == "text/html").get_content()
    images = {str(p["Content-ID"]).strip("<>"): p.get_payload(decode=True)
              for p in related.iter_parts() if p.get_content_type() == "image/png"}  # fmt: skip
    attached = [p.get_filename() or "" for p in msg.iter_attachments()]
    return msg, html, images, attached


def test_due_reports_reach_a_real_smtp_server_once_per_period(world: World, smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    cfg = world.config.model_copy(deep=True)
    cfg.report.smtp.port, cfg.report.smtp.host, cfg.report.smtp.starttls = port, "127.0.0.1", False
    cfg.report.from_addr = "reports@farm.example"
    engine = make_engine(cfg.database, writer=True)
    now = datetime.now(UTC)
    sub = ReportSubscription("farmer-a", "farmer@farm.example", "farm-a", "daily", "UTC")

    def refuse(msg: EmailMessage) -> None:
        raise ConnectionRefusedError("mail server down")

    # A mail server that is down: recorded failed, retried on the next tick.
    assert [o.status for o in deliver_due_reports(engine, cfg, now, [sub], send=refuse)] == ["failed"]
    # Two deliveries at once and one after: exactly one mail.
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.extend(o.status for o in deliver_due_reports(engine, cfg, now,
                                                                                                    [sub])))
               for _ in range(2)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(results) == ["sent", "skipped"]
    assert [o.status for o in deliver_due_reports(engine, cfg, now + timedelta(hours=1), [sub])] == ["skipped"]
    wait_for(lambda: len(inbox.messages) >= 1, 10, what="the report mail")
    assert len(inbox.messages) == 1
    rcpts, raw = inbox.messages[0]
    assert rcpts == ["farmer@farm.example"]
    msg, html, images, attached = _parts(raw)
    assert msg["Subject"].startswith("Cropwatch daily report · farm-a")
    cids = {c.partition('"')[0] for c in html.split('src="cid:')[1:]}
    assert cids == set(images) and len(images) == 6
    assert all(Image.open(io.BytesIO(png)).format == "PNG" for png in images.values())
    assert attached == [next(iter(attached))] and attached[0].endswith(".pdf")
    with engine.connect() as conn:
        row = conn.execute(text("SELECT status, attempts, period_key FROM report_deliveries")).one()
    assert (row.status, row.attempts, row.period_key) == ("sent", 2, due_period("daily", "UTC", now).key)


def test_subscriptions_are_scoped_to_the_users_farms(world: World) -> None:
    engine = make_engine(world.config.database, writer=True)
    migrate(engine)
    channels = ["mailto://bot:pw@smtp.farm.example?to=farmer@farm.example", "ntfy://farm-alerts"]
    for user, farms, freq in [("farmer-a", [], "weekly"), ("farmer-a", ["farm-b"], "daily"), ("agro", [], "off")]:
        spec = SubscriptionSpec(farms=farms, channels=channels, timezone="Europe/Berlin", report_frequency=freq)
        save_subscription(engine, user, spec, datetime.now(UTC))
    subs = load_report_subscriptions(engine, {"farmer-a": ["farm-a"], "agro": ["farm-a", "farm-b"]})
    assert subs == [ReportSubscription("farmer-a", "farmer@farm.example", "farm-a", "weekly", "Europe/Berlin")]


def test_cli_writes_the_pdf_and_a_browsable_html(world: World, tmp_path: Path) -> None:
    # A farm with no data yet (cheaper to draw, and every section must say so rather than fail).
    day = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    out = ["--out", str(tmp_path / "r.pdf"), "--html", str(tmp_path / "html")]
    assert report_main(["--config", str(world.config_path), "--farm", "farm-z", "--end", day, *out]) == 0
    assert (tmp_path / "r.pdf").read_bytes().startswith(b"%PDF")
    page = (tmp_path / "html" / "report.html").read_text()
    assert "cid:" not in page and 'src="map.farm-z.png"' in page and (tmp_path / "html" / "map.farm-z.png").exists()
    assert "No detections in this period." in page or "0 detections" in page
    assert report_main(["--config", str(world.config_path), "--timezone", "Mars/Olympus", "--out", "x.pdf"]) == 2


def test_reports_page_offers_the_pdf(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CROPWATCH_CONFIG", str(world.config_path))
    at = AppTest.from_file(str(APP / "views" / "reports.py"), default_timeout=60)
    at.session_state["cw_username"] = "farmer-a"
    at.run()
    at.button(key="rep_build").click().run()
    assert not at.exception
    assert "Download PDF" in str(at._tree)


def test_migration_9_adds_the_report_ledger_with_its_unique_key(tmp_path: Path) -> None:
    from sqlalchemy import inspect

    from farm_monitor.db import migrate

    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    assert migrate(engine, target=5) == [1, 2, 3, 4, 5]
    assert "report_deliveries" not in inspect(engine).get_table_names()
    assert 9 in migrate(engine)
    (index,) = [i for i in inspect(engine).get_indexes("report_deliveries") if i["unique"]]
    assert index["column_names"] == ["username", "farm_id", "frequency", "period_key"]
    engine.dispose()


def test_postgresql_gives_the_same_report_numbers(weekly: FarmReport, postgres_url: str, tmp_path: Path) -> None:
    from farm_monitor.report.data import load_farm_data

    w = seed(tmp_path / "pg", db_url=postgres_url)
    engine = make_engine(w.config.database)
    ref = weekly.farms[0]
    pg = load_farm_data(
        engine, "farm-a", ref.start, ref.end, load_layout(w.config.app.farm_file), w.config.alerts.disease
    )
    engine.dispose()
    assert pg.class_totals() == ref.class_totals()
    assert [(f.field_id, f.level, f.n, f.sick) for f in pg.fields] == [
        (f.field_id, f.level, f.n, f.sick) for f in ref.fields
    ]
    assert [(a.rule, a.severity) for a in pg.alerts] == [(a.rule, a.severity) for a in ref.alerts]
    assert [(s.quantity, s.field_id, s.low, s.high) for s in pg.sensors] == [
        (s.quantity, s.field_id, s.low, s.high) for s in ref.sensors
    ]
    assert [(y.field_id, y.p50, y.p50_at_start) for y in pg.yields] == [
        (y.field_id, y.p50, y.p50_at_start) for y in ref.yields
    ]
    assert {d.device_id: d.status for d in pg.devices} == {d.device_id: d.status for d in ref.devices}
