"""The farm monitor in a real browser: headless Chromium (Debian package) driven by Selenium.

Starts ``cropwatch monitor`` as a real process over a seeded SQLite file, logs in as an
agronomist, opens every page, corrects a label, and saves a screenshot of each page into
test-artifacts/screenshots/ (kept after the run; git-ignored).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from farm_monitor.db import make_engine
from tests.monitor_seed import PASSWORD, World, seed
from tests.services import REPO_ROOT, cropwatch_cmd, cropwatch_env, free_port, wait_for

SHOTS = REPO_ROOT / "test-artifacts" / "screenshots"
INSTALL = Path(__file__).with_name("install_chromium.sh")
PAGES = [
    "Overview",
    "Field",
    "Detections",
    "Alerts",
    "Reports",
    "Notifications",
    "Farms",
    "Devices",
    "Device",
    "Models",
    "Retraining",
    "Farm layout",
    "Users",
]

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra: pip install selenium")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402


def _chromium() -> tuple[str, str]:
    def found() -> tuple[str | None, str | None]:
        return shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")

    browser, driver = found()
    if not (browser and driver):
        proc = subprocess.run(["sh", str(INSTALL)], capture_output=True, text=True, timeout=600)
        browser, driver = found()
        if not (browser and driver):
            reason = f"Chromium could not be installed: {proc.stderr.strip()[-300:]}"
            if os.environ.get("CI") == "true":
                pytest.fail(reason)
            pytest.skip(reason)
    return browser, driver


@pytest.fixture(scope="module")
def monitor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, str]]:
    world = seed(tmp_path_factory.mktemp("browser"))
    port = free_port()
    log = (world.root / "monitor.log").open("w")
    proc = subprocess.Popen(
        cropwatch_cmd("monitor", "--config", str(world.config_path), "--port", str(port)),
        env=cropwatch_env(), stdout=log, stderr=subprocess.STDOUT, cwd=world.root,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert proc.poll() is None, (world.root / "monitor.log").read_text()[-2000:]
        try:
            return urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200
        except OSError:
            return False

    try:
        wait_for(healthy, timeout=60, interval=0.2, what="cropwatch monitor serving")
        yield world, url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    chromium, driver_path = _chromium()
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                "--window-size=1280,1100"):  # fmt: skip
        opts.add_argument(arg)
    drv = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=driver_path))
    drv.set_page_load_timeout(60)
    try:
        yield drv
    finally:
        drv.quit()


def _idle_with_title(drv: object, title: str) -> bool:
    """The page's script finished and shows its title, with no Streamlit exception box."""
    if drv.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]'):
        raise AssertionError(f"traceback on {title}")
    running = drv.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"] img, [data-testid="stSpinner"]')
    heads = [h.text.strip() for h in drv.find_elements(By.CSS_SELECTOR, "h1")]
    return not running and title in heads


def _charts_drawn(drv: object) -> bool:
    charts = drv.find_elements(By.CSS_SELECTOR, '[data-testid="stVegaLiteChart"], [data-testid="stArrowVegaLiteChart"]')
    # Streamlit shows grey skeletons while a chart's JavaScript chunk loads
    loading = drv.find_elements(By.CSS_SELECTOR, '[data-testid="stSkeleton"]')
    # a data grid is drawn when its cells' accessible table exists; a map when deck.gl has its canvas
    grids = drv.find_elements(By.CSS_SELECTOR, '[data-testid="stDataFrame"]')
    maps = drv.find_elements(By.CSS_SELECTOR, '[data-testid="stDeckGlJsonChart"]')
    return (
        not loading
        and all(c.find_elements(By.CSS_SELECTOR, "canvas, svg") for c in charts)
        and all(g.find_elements(By.CSS_SELECTOR, "table") for g in grids)
        and all(m.find_elements(By.CSS_SELECTOR, "canvas") for m in maps)
    )


def _shot(drv: object, name: str) -> None:
    """A screenshot of the whole page: the window grows to the content's height for the shot."""
    width, height = drv.get_window_size()["width"], drv.get_window_size()["height"]
    full = drv.execute_script(
        "const m = document.querySelector('[data-testid=\"stMain\"]') || document.body; return m.scrollHeight;"
    )
    drv.set_window_size(width, max(height, min(int(full) + 40, 5000)))
    drv.save_screenshot(str(SHOTS / f"{name}.png"))
    drv.set_window_size(width, height)


def test_log_in_open_every_page_and_correct_a_label(monitor: tuple[World, str], browser: object) -> None:
    world, url = monitor
    drv = browser
    SHOTS.mkdir(parents=True, exist_ok=True)
    drv.get(url)
    wait_for(lambda: drv.find_elements(By.CSS_SELECTOR, 'input[aria-label="User name"]'), 60, 0.2, "login form")
    drv.save_screenshot(str(SHOTS / "00-login.png"))
    drv.find_element(By.CSS_SELECTOR, 'input[aria-label="User name"]').send_keys("admin")
    drv.find_element(By.CSS_SELECTOR, 'input[aria-label="Password"]').send_keys(PASSWORD)
    drv.find_element(By.XPATH, "//button[.//p[text()='Log in']]").click()
    wait_for(lambda: _idle_with_title(drv, "Overview"), 60, 0.3, "overview after login")
    wait_for(lambda: drv.find_elements(By.CSS_SELECTOR, '[data-testid="stMetric"]'), 30, 0.2, "KPIs")

    for i, title in enumerate(PAGES, start=1):
        link = wait_for(
            lambda t=title: [a for a in drv.find_elements(By.CSS_SELECTOR, '[data-testid="stSidebarNav"] a')
                             if a.text.strip().endswith(t)],
            20, 0.2, f"nav link {title}",
        )  # fmt: skip
        link[0].click()
        wait_for(lambda t=title: _idle_with_title(drv, t), 60, 0.3, f"page {title}")
        if title == "Detections":
            wait_for(lambda: drv.find_elements(By.CSS_SELECTOR, '[data-testid="stImage"] img'), 30, 0.2, "gallery")
        wait_for(lambda: _charts_drawn(drv), 30, 0.3, f"charts on {title}")
        _shot(drv, f"{i:02d}-{title.lower().replace(' ', '-')}")
        body = drv.find_element(By.TAG_NAME, "body").text
        assert "Traceback" not in body

    # correct a label on the Detections page
    nav = drv.find_elements(By.CSS_SELECTOR, '[data-testid="stSidebarNav"] a')
    next(a for a in nav if a.text.endswith("Detections")).click()
    wait_for(lambda: _idle_with_title(drv, "Detections"), 60, 0.3, "detections again")
    label_inputs = "//*[@data-testid='stSelectbox'][.//label//p[text()='Label']]//input"
    box = wait_for(lambda: drv.find_elements(By.XPATH, label_inputs), 20, 0.2, "label selector")[0]
    drv.execute_script("arguments[0].scrollIntoView({block: 'center'});", box)
    box.click()
    box.send_keys("Tomato___healthy")
    box.send_keys(Keys.ENTER)
    saves = drv.find_elements(By.XPATH, "//button[.//p[text()='Save label']]")
    drv.execute_script("arguments[0].scrollIntoView({block: 'center'});", saves[0])
    wait_for(lambda: _idle_with_title(drv, "Detections"), 30, 0.3, "selection applied")
    drv.find_elements(By.XPATH, "//button[.//p[text()='Save label']]")[0].click()
    engine = make_engine(world.db_url)

    def stored() -> list:
        with engine.connect() as conn:
            return conn.execute(text("SELECT label, labelled_by FROM labels")).fetchall()

    rows = wait_for(stored, 30, 0.2, "label stored")
    assert [tuple(r) for r in rows] == [("Tomato___healthy", "admin")]
    wait_for(lambda: _idle_with_title(drv, "Detections"), 60, 0.3, "detections after saving")
    wait_for(lambda: "Label: Tomato · Healthy" in drv.find_element(By.TAG_NAME, "body").text, 30, 0.3, "label shown")
    _shot(drv, "10-detections-labelled")

    # readable on a phone: the overview at a phone's width
    drv.set_window_size(412, 915)
    drv.get(url)  # a new session: log in again at phone width
    wait_for(lambda: drv.find_elements(By.CSS_SELECTOR, 'input[aria-label="User name"]'), 60, 0.2, "login (phone)")
    drv.find_element(By.CSS_SELECTOR, 'input[aria-label="User name"]').send_keys("farmer-a")
    drv.find_element(By.CSS_SELECTOR, 'input[aria-label="Password"]').send_keys(PASSWORD)
    drv.find_element(By.XPATH, "//button[.//p[text()='Log in']]").click()
    wait_for(lambda: _idle_with_title(drv, "Overview"), 60, 0.3, "overview on a phone")
    wait_for(lambda: drv.find_elements(By.CSS_SELECTOR, '[data-testid="stMetric"]'), 30, 0.2, "KPIs on a phone")
    assert "secret" not in drv.find_element(By.TAG_NAME, "body").text
    _shot(drv, "11-overview-phone")
    drv.set_window_size(1280, 1100)


def test_acknowledge_link_from_a_notification_round_trip(monitor: tuple[World, str], browser: object) -> None:
    """The link a notification carries, opened in the browser without logging in: it acknowledges as
    its user once; the same link again, and an altered one, are refused by the server."""
    from datetime import UTC, datetime, timedelta

    from farm_monitor import acklink
    from farm_monitor.db.notifications import SubscriptionSpec, channel_key, save_subscription
    from farm_monitor.notify import ledger
    from tests.monitor_seed import ACK_SECRET

    world, url = monitor
    drv = browser
    engine = make_engine(world.db_url, writer=True)
    now = datetime.now(UTC)
    sub = save_subscription(engine, "agro", SubscriptionSpec(channels=["json://127.0.0.1:9/x"]), now)
    with engine.begin() as conn:
        alert_id = conn.execute(text("SELECT id FROM alerts WHERE dedup_key = 'device_offline:farm-a:gw-a2'")).scalar()
        ledger.plan(conn, [ledger.Planned(alert_id, sub, channel_key("json://127.0.0.1:9/x"), "raised", "agro")], now)
        delivery = conn.execute(text("SELECT max(id) FROM notification_deliveries")).scalar()
    token = acklink.sign(ACK_SECRET, acklink.AckClaim(alert_id, "agro", delivery, now + timedelta(hours=1)))

    def page_says(words: str) -> bool:
        return words in drv.find_element(By.TAG_NAME, "body").text

    drv.get(f"{url}/?ack={token}")
    wait_for(lambda: page_says(f"Alert #{alert_id} acknowledged as agro"), 60, 0.3, "acknowledged by the link")
    _shot(drv, "12-acknowledge-link")
    with engine.connect() as conn:
        who = conn.execute(text("SELECT acknowledged_by FROM alerts WHERE id = :i"), {"i": alert_id}).scalar()
    assert who == "agro"
    drv.get(f"{url}/?ack={token}")  # replayed: a new browser session, the same link
    wait_for(lambda: page_says("already used"), 60, 0.3, "replayed link refused")
    body, mac = token.split(".")
    drv.get(f"{url}/?ack={body[:-1] + ('A' if body[-1] != 'A' else 'B')}.{mac}")
    wait_for(lambda: page_says("altered"), 60, 0.3, "altered link refused")
    _shot(drv, "13-acknowledge-link-altered")
    engine.dispose()
