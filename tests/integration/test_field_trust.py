"""Field trust end to end: an agent on a folder of leaf photos, bean photos and non-leaf frames,
with a real ONNX model whose signed manifest carries the abstention rule, reporting over a real
Mosquitto into ingest (SQLite).

By default the model is the torch-free colour classifier with trust outputs (tests/edge_models.py),
so the test is fast and its verdicts are known: grey, dark and noise frames are ``not_a_leaf``,
brown frames ``uncertain``. ``TRUST_E2E_MANIFEST`` and ``TRUST_E2E_PUBKEY`` point it at a model
exported by ``cropwatch export`` instead (docs/disease-model.md: the closing-note counts); then
it prints the counts per kind of image and checks only the invariants.
"""

from __future__ import annotations

import io
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from cloud_trainer.disease.nonleaf import generated_frames, skimage_frames
from farm_monitor.config import MonitorConfig
from tests.edge_helpers import agent_config
from tests.edge_models import build_trust_classifier
from tests.integration.ingest_helpers import config as ingest_config, ingest_thread, query
from tests.integration.rollout_helpers import running
from tests.services import Broker, wait_for

FARM, DEVICE, FIELD = "trust-farm", "cam-1", "block-a"


def _jpeg(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _images(team_data: Path, per_kind: int) -> dict[str, list[bytes]]:
    lab = sorted((team_data / "leaf_sample").rglob("*.JPG"))[::9][:per_kind]
    beans = sorted((team_data / "leaf_field_dev" / "test").rglob("*.jpg"))[::3][:per_kind]
    try:
        photos = [b for _, b in skimage_frames("held_out")][:per_kind]
    except ModuleNotFoundError:  # scikit-image is a trainer extra; generated frames still cover the gate
        photos = []
    rng = np.random.default_rng(3)
    brown = [_jpeg(np.clip(rng.normal((120, 80, 40), 10, (64, 64, 3)), 0, 255).astype(np.uint8)) for _ in range(4)]
    return {
        "lab leaf": [p.read_bytes() for p in lab],
        "bean (unknown crop)": [p.read_bytes() for p in beans],
        "non-leaf photo": photos,
        "generated non-leaf": [b for _, b in generated_frames(per_kind, seed=11)],
        "brown blotch": brown,
    }


def _model(tmp: Path) -> tuple[Path, Path, bool]:
    manifest, pub = os.environ.get("TRUST_E2E_MANIFEST"), os.environ.get("TRUST_E2E_PUBKEY")
    if manifest and pub:
        return Path(manifest), Path(pub), True
    built = build_trust_classifier(tmp / "model")
    return built.manifest_path, built.public_key, False


def test_agent_reports_uncertain_and_not_a_leaf_into_ingest(
    tmp_path: Path, mqtt_broker: Broker, sqlite_url: str, team_data: Path
) -> None:
    manifest, pub, real = _model(tmp_path)
    images = _images(team_data, per_kind=24 if real else 6)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    names: dict[str, str] = {}
    for kind, blobs in images.items():
        for i, blob in enumerate(blobs):
            name = f"{kind.split()[0]}-{i:03d}.jpg"
            (tmp_path / name).write_bytes(blob)
            shutil.move(tmp_path / name, inbox / name)
            names[name] = kind
    doc = agent_config(
        tmp_path / "agent", mqtt_broker.port,
        {"trust": {"public_keys": [str(pub)]}, "models": [{"manifest": str(manifest), "threads": 1}]},
        sources=[{"type": "folder", "name": "drop", "path": str(inbox), "settle_s": 0, "scan_interval_s": 0.1}],
        samples={"enabled": True, "confidence_below": 0.0, "max_per_hour": 1000, "max_per_day": 1000},
    )  # fmt: skip
    doc["device"] = {"farm_id": FARM, "device_id": DEVICE, "field_id": FIELD}
    cfg = ingest_config(sqlite_url, mqtt_broker)
    cfg = MonitorConfig.model_validate(
        cfg.model_dump() | {"alerts": {"evaluate_every_s": 0.05, "disease": {"min_detections": 1, "percent": 10}}}
    )
    with ingest_thread(cfg), running(doc):
        wait_for(
            lambda: query(sqlite_url, "SELECT COUNT(*) FROM detections")[0][0] >= len(names), 120,
            what=f"{len(names)} detections stored",
        )  # fmt: skip
        rows = query(sqlite_url, "SELECT image_ref, COALESCE(status, 'ok'), msg_id FROM detections")
        samples = dict(query(sqlite_url, "SELECT detection_msg_id, reason FROM samples"))
        wait_for(lambda: query(sqlite_url, "SELECT COUNT(*) FROM samples")[0][0] >= len(samples), 10, what="samples")
        alerts = query(sqlite_url, "SELECT dedup_key FROM alerts WHERE rule = 'disease'")
    counts: dict[str, Counter[str]] = {k: Counter() for k in images}
    for ref, status, msg_id in rows:
        counts[names[Path(ref).name]][status] += 1
        # An abstained detection goes to labelling as `uncertain`; a refused frame is not a labelling job.
        if status == "uncertain":
            assert samples.get(msg_id) == "uncertain"
        if status == "not_a_leaf":
            assert msg_id not in samples
    for kind, c in counts.items():
        print(f"TRUST-E2E {kind}: {len(images[kind])} images: {dict(c)}")
    assert sum(sum(c.values()) for c in counts.values()) == len(names)
    flagged_labels = {
        r[0] for r in query(sqlite_url, "SELECT label FROM detections WHERE COALESCE(status, 'ok') <> 'ok'")
    }
    answered_labels = {
        r[0] for r in query(sqlite_url, "SELECT label FROM detections WHERE COALESCE(status, 'ok') = 'ok'")
    }
    # The disease rule counts answered detections only: a label seen only in abstained ones never alerts.
    for key in (k for (k,) in alerts):
        assert key.rsplit(":", 1)[1] in answered_labels
    if not real:
        assert counts["generated non-leaf"]["not_a_leaf"] >= 2  # the noise and the dark frame: no colour
        assert counts["brown blotch"] == Counter({"uncertain": 4})
        assert "late_blight" in flagged_labels and "late_blight" not in answered_labels
        assert not any(k.endswith(":late_blight") for (k,) in alerts)
