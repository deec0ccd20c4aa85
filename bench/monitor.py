"""Monitor page times over a year of data from 200 devices, on SQLite (and PostgreSQL with --pg).

Seeds one farm of ``--devices`` devices on ``--fields`` fields with ``--days`` of data: hourly
telemetry with 3 readings (200 devices x 365 days = 5.3M rows), ``--per-day`` detections per
device (15: 1.1M rows), hourly heartbeats for the last 30 days, daily yield forecasts, samples,
events and alerts. Rows are written with executemany in large transactions straight into the
ingest tables (created by the project's migrations), so the seed takes minutes, not hours.

Then every page script is run server-side with Streamlit's AppTest as an admin: ``cold`` with the
query cache cleared (what the first visitor after the TTL waits), ``warm`` straight after (cached).
The baseline is the same page on an empty database, run in the same process; the target is 1.5 s.

    python bench/monitor.py                          # seed /tmp/cropwatch-bench.db (reused if present)
    python bench/monitor.py --pg postgresql+psycopg://postgres@127.0.0.1/test
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from farm_monitor.app.auth import UsersFile  # noqa: E402
from farm_monitor.db import make_engine, migrate  # noqa: E402

# (row label, page script, widget state set before the run): defaults, plus the widest periods
PAGES = [
    ("overview", "overview", {}),
    ("field", "field", {}),
    ("field 365d", "field", {"field_range": "365 days"}),
    ("detections", "detections", {}),
    ("detect. 365d", "detections", {"det_range": "365 days"}),
    ("alerts", "alerts", {"al_open": False}),
    ("devices", "devices", {}),
    ("device", "device", {}),
    ("device 30d", "device", {"dev_days": 30}),
    ("models", "models", {}),
]
TARGET_S = 1.5
FARM = "bench-farm"
LABELS = ["Tomato___healthy", "Tomato___Late_blight", "Tomato___Early_blight", "Tomato___Septoria_leaf_spot"]
QUANTITIES = [("soil_moisture", "m3/m3"), ("air_temperature", "degC"), ("relative_humidity", "%")]
PASSWORD = "bench-password"
PG_SCHEMA = "cropwatch_bench"
SHA = "0" * 64


def ts(t: datetime) -> str:
    return t.isoformat(" ", "microseconds")


class Ids:
    """Unique 26-character message ids (sortable, like the ULIDs devices send)."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return f"{self.n:026d}"


def seed_rows(devices: int, fields: int, days: int, per_day: int, end: datetime):
    """Yield (table, columns, rows-chunk) for the whole data set."""
    rng = random.Random(7)
    ids = Ids()
    start = end - timedelta(days=days)
    devs = [(f"gw-{i:03d}", f"field-{i % fields:02d}") for i in range(devices)]
    jpeg = _tiny_jpeg()
    recv = ts(end)

    # telemetry: hourly, 3 readings per message
    cols = ("msg_id", "reading_index", "farm_id", "device_id", "field_id", "observed_at", "received_at", "sensor",
            "quantity", "value", "unit")  # fmt: skip
    for dev, fld in devs:
        rows = []
        for h in range(days * 24):
            t = ts(start + timedelta(hours=h))
            mid = ids()
            for k, (q, unit) in enumerate(QUANTITIES):
                rows.append((mid, k, FARM, dev, fld, t, recv, f"s{k}", q, rng.random() * 30, unit))
        yield "telemetry", cols, rows

    cols = ("msg_id", "farm_id", "device_id", "field_id", "observed_at", "received_at", "model_name", "model_version",
            "model_sha256", "model_variant", "source", "image_ref", "image_sha256", "label", "confidence", "top_k",
            "inference_ms", "shadow")  # fmt: skip
    scols = ("msg_id", "farm_id", "device_id", "field_id", "observed_at", "received_at", "reason", "model_name",
             "model_version", "detection_msg_id", "source", "image_ref", "predicted_label", "confidence", "width",
             "height", "image_size", "image_jpeg")  # fmt: skip
    step = 86400 / per_day
    for dev, fld in devs:
        rows, samples = [], []
        for d in range(days):
            for k in range(per_day):
                t = ts(start + timedelta(days=d, seconds=k * step + rng.random() * 60))
                label = LABELS[0] if rng.random() < 0.8 else rng.choice(LABELS[1:])
                conf = 0.5 + rng.random() / 2
                top = json.dumps([{"label": label, "probability": conf}])
                mid = ids()
                rows.append((mid, FARM, dev, fld, t, recv, "leaf-disease", "1.2.0", SHA, "int8", "cam",
                             f"cam/{mid}.jpg", None, label, conf, top, 40.0, None))  # fmt: skip
                if conf < 0.52:
                    samples.append((ids(), FARM, dev, fld, t, recv, "low_confidence", "leaf-disease", "1.2.0", mid,
                                    "cam", None, label, conf, 16, 16, len(jpeg), jpeg))  # fmt: skip
        yield "detections", cols, rows
        yield "samples", scols, samples

    cols = ("msg_id", "farm_id", "device_id", "observed_at", "received_at", "state", "since", "agent_version",
            "models", "health", "reason")  # fmt: skip
    health = json.dumps({"uptime_s": 1000.0, "outbox_depth": 2, "outbox_oldest_age_s": 5.0, "dropped": {}})
    models = json.dumps([{"name": "leaf-disease", "version": "1.2.0", "sha256": SHA, "state": "active"}])
    for dev, _ in devs:
        rows = [(ids(), FARM, dev, ts(end - timedelta(hours=h)), recv, "online", ts(start), "0.1.0", models, health,
                 None) for h in range(min(days, 30) * 24)]  # fmt: skip
        yield "status_reports", cols, rows

    cols = ("msg_id", "farm_id", "device_id", "field_id", "observed_at", "received_at", "model_name", "model_version",
            "model_sha256", "crop", "season_start", "days_into_season", "season_progress", "expected", "p10", "p50",
            "p90", "unit")  # fmt: skip
    season = (end - timedelta(days=150)).date()
    for dev, fld in devs:
        rows = []
        for d in range(days):
            day = start + timedelta(days=d)
            into = (day.date() - season).days
            if into >= 0:
                p50 = 10 + rng.random()
                rows.append((ids(), FARM, dev, fld, ts(day), recv, "yield", "0.3.1", SHA, "maize", season.isoformat(),
                             into, min(1.0, into / 180), p50, p50 - 1.5, p50, p50 + 1.5, "t/ha"))  # fmt: skip
        yield "yield_estimates", cols, rows

    cols = ("msg_id", "farm_id", "device_id", "observed_at", "received_at", "level", "code", "message", "details")
    rows = [(ids(), FARM, dev, ts(start + timedelta(days=d)), recv, "warning", "camera_retry", "camera busy", None)
            for dev, _ in devs for d in range(0, days, 3)]  # fmt: skip
    yield "events", cols, rows

    cols = ("rule", "dedup_key", "severity", "farm_id", "device_id", "field_id", "message", "details", "raised_at",
            "resolved_at")  # fmt: skip
    rows = [("device_offline", f"off:{dev}:{d}", "critical", FARM, dev, None, f"{dev} offline", "{}",
             ts(start + timedelta(days=d)), ts(start + timedelta(days=d, hours=2)) if d < days - 1 else None)
            for dev, _ in devs for d in range(0, days, 30)]  # fmt: skip
    yield "alerts", cols, rows


def _tiny_jpeg() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (60, 140, 60)).save(buf, "JPEG")
    return buf.getvalue()


def devices_rows(devices: int, end: datetime) -> tuple[tuple, list[tuple]]:
    cols = ("farm_id", "device_id", "state", "state_since", "status_observed_at", "last_heartbeat_at", "last_seen_at",
            "first_seen_at", "agent_version", "models", "health")  # fmt: skip
    health = json.dumps({"uptime_s": 1000.0, "outbox_depth": 2, "outbox_oldest_age_s": 5.0, "dropped": {"cam": 1}})
    models = json.dumps([{"name": "leaf-disease", "version": "1.2.0", "sha256": SHA, "state": "active"}])
    rows = []
    for i in range(devices):
        state = "offline" if i % 25 == 0 else "online"
        rows.append((FARM, f"gw-{i:03d}", state, ts(end - timedelta(days=3)), ts(end), ts(end), ts(end),
                     ts(end - timedelta(days=365)), "0.1.0", models, health))  # fmt: skip
    return cols, rows


def layout(devices: int, fields: int) -> dict:
    feats = []
    for f in range(fields):
        lon, lat = -93.6 + (f % 5) * 0.01, 42.0 + (f // 5) * 0.01
        ring = [[lon, lat], [lon + 0.009, lat], [lon + 0.009, lat + 0.009], [lon, lat + 0.009], [lon, lat]]
        feats.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"kind": "field", "farm_id": FARM, "field_id": f"field-{f:02d}", "crop": "maize"},
            }
        )
    for i in range(devices):
        f = i % fields
        lon, lat = -93.6 + (f % 5) * 0.01 + 0.001 * (i // fields % 9), 42.0 + (f // 5) * 0.01 + 0.004
        feats.append({"type": "Feature", "geometry": {"type": "Point", "coordinates": [lon, lat]},
                      "properties": {"kind": "device", "farm_id": FARM, "device_id": f"gw-{i:03d}",
                                     "field_id": f"field-{f:02d}"}})  # fmt: skip
    return {"type": "FeatureCollection", "features": feats}


def seed_sqlite(path: Path, args: argparse.Namespace, end: datetime) -> dict[str, int]:
    migrate(make_engine(f"sqlite:///{path}", writer=True))
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA synchronous=OFF")
    con.execute("PRAGMA cache_size=-400000")
    counts: dict[str, int] = {}
    total = args.devices * (2 + 4 + 1)  # generator chunks, roughly
    with tqdm(total=total, desc="seed sqlite", unit="chunk") as bar:
        con.execute("BEGIN")
        for table, cols, rows in seed_rows(args.devices, args.fields, args.days, args.per_day, end):
            sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
            con.executemany(sql, rows)
            counts[table] = counts.get(table, 0) + len(rows)
            bar.update(1)
        cols, rows = devices_rows(args.devices, end)
        con.executemany(f"INSERT INTO devices ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", rows)
        con.execute("COMMIT")
    con.execute("ANALYZE")
    con.close()
    return counts


def seed_postgres(url: str, args: argparse.Namespace, end: datetime) -> dict[str, int]:
    import psycopg
    from sqlalchemy.engine import make_url

    migrate(make_engine(url, writer=True), timescaledb="off")
    u = make_url(url)
    conninfo = u.set(drivername="postgresql").render_as_string(hide_password=False)
    counts: dict[str, int] = {}
    with psycopg.connect(conninfo) as con, tqdm(desc="seed postgres", unit="chunk") as bar:
        for table, cols, rows in seed_rows(args.devices, args.fields, args.days, args.per_day, end):
            with con.cursor().copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            counts[table] = counts.get(table, 0) + len(rows)
            bar.update(1)
        cols, rows = devices_rows(args.devices, end)
        with con.cursor().copy(f"COPY devices ({', '.join(cols)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        con.execute("ANALYZE")
    return counts


def pg_schema(base: str, create: bool) -> str:
    """A private schema for the bench (created fresh, or dropped); returns a URL that uses it."""
    import psycopg
    from sqlalchemy.engine import make_url

    conninfo = make_url(base).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as con:
        con.execute(f"DROP SCHEMA IF EXISTS {PG_SCHEMA} CASCADE")
        if create:
            con.execute(f"CREATE SCHEMA {PG_SCHEMA}")
    return base + ("&" if "?" in base else "?") + f"options=-csearch_path%3D{PG_SCHEMA}"


def time_pages(config: Path, runs: int) -> dict[str, tuple[float, float]]:
    import streamlit as st
    from streamlit.logger import set_log_level
    from streamlit.testing.v1 import AppTest

    set_log_level("error")
    # AppTest runs scripts without a browser session; Streamlit warns about that on every run
    for name in ("streamlit.runtime.scriptrunner_utils.script_run_context", "streamlit.runtime.caching.cache_data_api"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ["CROPWATCH_CONFIG"] = str(config)
    st.cache_resource.clear()
    out = {}
    for label, page, state in PAGES:
        cold, warm = [], []
        for _ in range(runs):
            st.cache_data.clear()
            for bucket in (cold, warm):
                at = AppTest.from_file(str(REPO / "farm_monitor" / "app" / "views" / f"{page}.py"), default_timeout=120)
                at.session_state["cw_username"] = "admin"
                for key, value in state.items():
                    at.session_state[key] = value
                t0 = time.perf_counter()
                at.run()
                bucket.append(time.perf_counter() - t0)
                if at.exception or at.error:
                    raise SystemExit(f"{page} failed: {[e.value for e in at.exception] or [e.value for e in at.error]}")
        out[label] = (statistics.median(cold), statistics.median(warm))
    return out


def write_world(root: Path, url: str, args: argparse.Namespace) -> Path:
    users = root / "users.json"
    if not users.exists():
        UsersFile(users).add("admin", PASSWORD, "admin", ["*"])
    (root / "farm.geojson").write_text(json.dumps(layout(args.devices, args.fields)))
    cfg = root / f"monitor-{abs(hash(url))}.toml"
    cfg.write_text(f'[database]\nurl = "{url}"\n[app]\nusers_file = "{users}"\nfarm_file = "{root / "farm.geojson"}"\n')
    return cfg


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=Path, default=Path(tempfile.gettempdir()) / "cropwatch-bench.db")
    parser.add_argument("--reseed", action="store_true", help="seed again even if --db exists")
    parser.add_argument("--pg", help=f"also seed and time this PostgreSQL URL (in a schema {PG_SCHEMA}, dropped after)")
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--fields", type=int, default=20)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--per-day", type=int, default=15, help="detections per device and day")
    parser.add_argument("--runs", type=int, default=3, help="median of this many cold and warm runs per page")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("streamlit").setLevel(logging.ERROR)
    root = args.db.parent / "cropwatch-bench"
    root.mkdir(exist_ok=True)
    end = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    if args.reseed and args.db.exists():
        args.db.unlink()
    if not args.db.exists():
        t0 = time.perf_counter()
        counts = seed_sqlite(args.db, args, end)
        print(f"seeded {args.db} in {time.perf_counter() - t0:.0f} s: {counts}")
    con = sqlite3.connect(args.db)
    sizes = {t: con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("detections", "telemetry", "samples")}
    con.close()
    print(f"rows: {sizes}")

    empty = root / "empty.db"
    empty.unlink(missing_ok=True)
    migrate(make_engine(f"sqlite:///{empty}", writer=True))
    empty_cfg = write_world(root, f"sqlite:///{empty}", args)
    time_pages(empty_cfg, 1)  # warm-up: imports and Streamlit's first script run are not page time
    baseline = time_pages(empty_cfg, args.runs)
    results = {"sqlite": time_pages(write_world(root, f"sqlite:///{args.db}", args), args.runs)}
    if args.pg:
        url = pg_schema(args.pg, create=True)
        try:
            t0 = time.perf_counter()
            counts = seed_postgres(url, args, end)
            print(f"seeded PostgreSQL in {time.perf_counter() - t0:.0f} s: {counts}")
            results["postgresql"] = time_pages(write_world(root, url, args), args.runs)
        finally:
            pg_schema(args.pg, create=False)

    print(f"\npage times (median of {args.runs}), {args.devices} devices x {args.days} days; target {TARGET_S} s")
    print(
        f"{'page':<13} {'backend':<10} {'empty db':>9} {'cold s':>8} {'warm s':>8} {'x empty':>8} {'cold/target':>12}"
    )
    worst = 0.0
    for backend, res in results.items():
        for page, (cold, warm) in res.items():
            base = baseline[page][0]
            ratio = cold / TARGET_S
            if backend == "sqlite":
                worst = max(worst, ratio)
            print(f"{page:<13} {backend:<10} {base:>9.3f} {cold:>8.3f} {warm:>8.3f} {cold / base:>8.1f} {ratio:>12.2f}")
    print(f"\nslowest SQLite page: {worst:.2f} of the target ({'met' if worst <= 1 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
