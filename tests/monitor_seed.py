"""A small two-farm monitor world for the monitor tests, stored through ingest's own code.

Messages are built with the shared schemas and fed to :class:`farm_monitor.ingest.pipeline.Ingestor`
(the code ``cropwatch ingest`` runs), so the rows are exactly what production writes. farm-b's
labels and device names contain ``secret`` so tests can assert that they never show for farm-a.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from PIL import Image

from cloud_trainer.disease import LEAF_SAMPLE
from farm_monitor.app.auth import UsersFile
from farm_monitor.config import MonitorConfig
from farm_monitor.db import make_engine, migrate
from farm_monitor.db.dialect import Dialect
from farm_monitor.ingest.alerts import AlertEngine
from farm_monitor.ingest.metrics import Metrics
from farm_monitor.ingest.pipeline import Ingestor
from shared import messages as m
from shared.ids import new_msg_id
from shared.topics import device_topic

LEAVES = LEAF_SAMPLE  # the real photos shipped with the trainer
PASSWORD = "correct horse battery"
ACK_SECRET = "seed-ack-secret-0123456789abcdef"
SHA = "0" * 64
FARM_A = {"gw-a1": "north", "gw-a2": "south", "gw-a3": "south"}  # gw-a3 is not in the layout
FARM_B = {"gw-secret-b1": "east"}


@dataclass
class World:
    root: Path
    config_path: Path
    db_url: str
    config: MonitorConfig


def _square(lon: float, lat: float, d: float = 0.004) -> list[list[list[float]]]:
    return [[[lon, lat], [lon + d, lat], [lon + d, lat + d], [lon, lat + d], [lon, lat]]]


def layout_doc() -> dict:
    def field(farm: str, fid: str, lon: float, lat: float, crop: str) -> dict:
        return {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": _square(lon, lat)},
            "properties": {"kind": "field", "farm_id": farm, "field_id": fid, "name": fid.title(), "crop": crop,
                           "planting_date": "2026-04-20"},
        }  # fmt: skip

    def device(farm: str, dev: str, fid: str, lon: float, lat: float) -> dict:
        return {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [lon, lat]},
            "properties": {"kind": "device", "farm_id": farm, "device_id": dev, "field_id": fid},
        }

    return {
        "type": "FeatureCollection",
        "features": [
            field("farm-a", "north", -93.600, 42.004, "tomato"),
            field("farm-a", "south", -93.600, 42.000, "tomato"),
            field("farm-b", "east", -90.0, 40.0, "potato"),
            device("farm-a", "gw-a1", "north", -93.598, 42.006),
            device("farm-a", "gw-a2", "south", -93.598, 42.002),
            device("farm-b", "gw-secret-b1", "east", -89.998, 40.002),
        ],
    }


def _leaf_jpegs() -> list[tuple[str, bytes, int, int]]:
    out = []
    for folder in sorted(p for p in LEAVES.iterdir() if p.is_dir()):
        path = sorted(folder.iterdir())[0]
        img = Image.open(path).convert("RGB")
        img.thumbnail((160, 160))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=80)
        out.append((folder.name, buf.getvalue(), img.width, img.height))
    return out


def _messages(farm: str, devices: dict[str, str], now: datetime, secret: bool) -> list[m.Envelope]:
    model = m.ModelRef(name="leaf-disease", version="1.2.0", sha256=SHA)
    leaves = _leaf_jpegs()
    out: list[m.Envelope] = []
    for i, (dev, fld) in enumerate(devices.items()):
        base = {"farm_id": farm, "device_id": dev}
        # north is sick (most detections a disease), south mostly healthy
        for k in range(30):
            sick = (k % 10) < (8 if fld == "north" else 1)
            label = ("Potato___secret_blight" if secret else "Tomato___Late_blight") if sick else "Tomato___healthy"
            other = "Tomato___healthy" if sick else "Tomato___Late_blight"
            out.append(m.Detection(
                **base, msg_id=new_msg_id(), observed_at=now - timedelta(hours=k * 2 + i), model=model,
                source="cam", image_ref=f"cam/{k}.jpg", field_id=fld,
                top_k=[m.LabelScore(label=label, probability=0.8), m.LabelScore(label=other, probability=0.2)],
            ))  # fmt: skip
        for h in range(48):
            out.append(m.Telemetry(
                **base, msg_id=new_msg_id(), observed_at=now - timedelta(hours=h), field_id=fld,
                readings=[
                    m.SensorReading(sensor="soil-1", quantity="soil_moisture", value=0.3 + 0.002 * h, unit="m3/m3"),
                    m.SensorReading(sensor="air-1", quantity="air_temperature", value=18 + (h % 24) / 3, unit="degC"),
                ],
            ))  # fmt: skip
        if dev == "gw-a1":  # a Modbus EC probe gone bad: readings stored, flagged, alert raised
            for h in range(3):
                out.append(m.Telemetry(
                    **base, msg_id=new_msg_id(), observed_at=now - timedelta(hours=h), field_id=fld,
                    readings=[m.SensorReading(sensor="probe-2", quantity="soil_ec", value=31.5 + h, unit="dS m-1")],
                    sensor_health=[m.SensorHealth(sensor="probe-2", quantity="soil_ec", state="out_of_range",
                                                  since=now - timedelta(hours=3))],
                    # Bridged over LoRaWAN: the radio link of each uplink; the newest (h=0) shows.
                    link=m.RadioLink(rssi_dbm=-101.0 - h, snr_db=7.5, frame_counter=4242 - h,
                                     gateway_id="gw-eui-0016c001ff10a235", gateways=2),
                ))  # fmt: skip
        for d in range(10):
            out.append(m.YieldEstimate(
                **base, msg_id=new_msg_id(), observed_at=now - timedelta(days=9 - d, minutes=i), field_id=fld,
                model=m.ModelRef(name="yield", version="0.3.1", sha256=SHA), crop="tomato",
                season_start=date(2026, 4, 20), days_into_season=190 + d, season_progress=0.8,
                expected=60 + d, quantiles=m.YieldQuantiles(p10=50 + d, p50=60 + d, p90=70 + d), unit="t/ha",
            ))  # fmt: skip
        for s in range(2):
            name, jpeg, w, h = leaves[(i * 2 + s) % len(leaves)]
            out.append(m.Sample(
                **base, msg_id=new_msg_id(), observed_at=now - timedelta(hours=s + 1, minutes=i),
                reason="low_confidence", model=model, field_id=fld, source="cam",
                predicted_label="Potato___secret_blight" if secret else name, confidence=0.35 + 0.1 * s,
                width=w, height=h, image_jpeg=jpeg,
            ))  # fmt: skip
        out.append(m.Event(**base, msg_id=new_msg_id(), observed_at=now - timedelta(hours=3), level="warning",
                           code="camera_retry", message="camera busy, retried"))  # fmt: skip
        state = "offline" if dev == "gw-a2" else "online"
        out.append(m.Status(
            **base, msg_id=new_msg_id(), observed_at=now - timedelta(minutes=1), state=state,
            since=now - timedelta(hours=5), agent_version="0.1.0",
            models=[m.ActiveModel(name="leaf-disease", version="1.2.0", sha256=SHA)],
            health=m.Health(uptime_s=3600, outbox_depth=3 * i, outbox_oldest_age_s=12.0 * i, dropped={"camera": i}),
        ))  # fmt: skip
    return out


def _registry(root: Path) -> None:
    """A registry with one signed (tiny) classifier, as 'cropwatch models import' leaves it."""
    from fleet.registry import Registry
    from shared.manifest import TrustedKeys, load_public_key
    from tests.edge_models import build_classifier

    built = build_classifier(root / "build", name="leaf-disease", version="1.2.0")
    Registry(root / "registry").import_version(
        built.manifest_path, TrustedKeys([load_public_key(str(built.public_key))])
    )


def seed(root: Path, db_url: str | None = None) -> World:
    """Database, layout, users and config under ``root``; returns where everything is."""
    root.mkdir(parents=True, exist_ok=True)
    db_url = db_url or f"sqlite:///{root / 'monitor.db'}"
    users_file, farm_file = root / "users.json", root / "farm.geojson"
    farm_file.write_text(json.dumps(layout_doc()))
    config_path = root / "monitor.toml"
    config_path.write_text(
        f'[database]\nurl = "{db_url}"\n\n[app]\nusers_file = "{users_file}"\nfarm_file = "{farm_file}"\n'
        f'registry = "{root / "registry"}"\ncache_ttl_s = 1\n\n[notify]\nack_secret = "{ACK_SECRET}"\n'
    )
    cfg = MonitorConfig.model_validate(
        {"database": {"url": db_url}, "app": {"users_file": str(users_file), "farm_file": str(farm_file)}}
    )
    engine = make_engine(cfg.database, writer=True)
    migrate(engine)
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    msgs = _messages("farm-a", FARM_A, now, False) + _messages("farm-b", FARM_B, now, True)
    # Farm gateways: farm-a's uplink is up; farm-b's went down 3 h ago and nothing came since.
    for farm, age_h, uplink in (("farm-a", 0, "up"), ("farm-b", 3, "down")):
        msgs.append(m.GatewayStatus(
            farm_id=farm, device_id="gateway", msg_id=new_msg_id(), observed_at=now - timedelta(hours=age_h),
            bridge="cloud", uplink=uplink, uplink_since=now - timedelta(hours=age_h + 1),
            backlog_since=now - timedelta(hours=age_h + 1) if uplink == "down" else None, queued_bytes=52_000,
            queued_messages=61, disk_free_bytes=9_000_000_000, disk_total_bytes=16_000_000_000,
            gateway_version="0.1.0",
        ))  # fmt: skip
    ingest = Ingestor(cfg, engine, Metrics())
    items = [(device_topic(x.farm_id, x.device_id, x.kind), x.to_json(), i, 1, 0, 0.0) for i, x in enumerate(msgs)]
    assert ingest.process(items)
    ingest.periodic(force_alerts=True)  # the disease rule raises the north field's alert
    d = Dialect(engine)
    alerts = AlertEngine(cfg.alerts, d, Metrics())
    with engine.begin() as conn:
        alerts.raise_alert(conn, "device_offline", "device_offline:farm-b:gw-secret-b1", "critical", "farm-b",
                           "secret device gw-secret-b1 offline", now, device_id="gw-secret-b1")  # fmt: skip
        alerts.raise_alert(conn, "device_offline", "device_offline:farm-a:gw-a2", "critical", "farm-a",
                           "gw-a2 has been offline for 2 h", now, device_id="gw-a2")  # fmt: skip
    engine.dispose()
    _registry(root)
    users = UsersFile(users_file)
    users.add("admin", PASSWORD, "admin", ["*"])
    users.add("agro", PASSWORD, "agronomist", ["*"])
    users.add("farmer-a", PASSWORD, "farmer", ["farm-a"])
    return World(root, config_path, db_url, cfg)
