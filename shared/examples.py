"""One valid, deterministic example of every message kind.

Used by the generated message reference, the tests and the benchmarks, so each of them exercises
every kind with realistic content.
"""

from __future__ import annotations

import io
from datetime import UTC, date, datetime

import numpy as np
from PIL import Image

from . import messages as m
from .ids import new_msg_id
from .manifest import ImagePreprocessing, ModelFile, ModelManifest, Signature, TensorData, TensorSpec

EXAMPLE_TIME = datetime(2026, 6, 14, 9, 30, 0, tzinfo=UTC)
EXAMPLE_SHA = "3f6c0a8e9b1d2c4e5f60718293a4b5c6d7e8f90112233445566778899aabbccd"
_FIXED_ID = "01J0B3M8K0" + "A" * 16


def tiny_jpeg(width: int = 32, height: int = 24, seed: int = 0) -> bytes:
    """A small real JPEG (a green gradient with noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    arr = np.stack([x * 4 % 256, 120 + y * 3 % 100, (x + y) % 64], axis=-1).astype(np.int16)
    arr = np.clip(arr + rng.integers(-10, 10, size=arr.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def example_manifest() -> ModelManifest:
    return ModelManifest(
        name="leaf-disease",
        version="1.2.0",
        task="disease_classification",
        created_at=EXAMPLE_TIME,
        files=[ModelFile(variant="fp32", path="model.onnx", sha256=EXAMPLE_SHA, size=13_600_000)],
        inputs=[TensorSpec(name="image", dtype="uint8", shape=["batch", 224, 224, 3])],
        outputs=[TensorSpec(name="probabilities", dtype="float32", shape=["batch", 3])],
        labels=["Tomato___healthy", "Tomato___Late_blight", "Tomato___Septoria_leaf_spot"],
        preprocessing=ImagePreprocessing(height=224, width=224),
        metrics={"test_accuracy": 0.94, "test_macro_f1": 0.93},
        training_data_fingerprint="sha256:" + "0" * 64,
        self_test_inputs={"image": TensorData.seeded("uint8", [1, 224, 224, 3], "leaf-disease-1.2.0")},
        signature=Signature(key_id="0123456789abcdef", value="c2lnbmF0dXJl"),
    )


# Over 80 lines on purpose: one literal example per message kind, read side by side as a table.
def example_messages(farm_id: str = "demo-farm", device_id: str = "gw-01", fixed: bool = True) -> dict[str, m.Envelope]:
    """Every kind, keyed like :data:`shared.messages.MESSAGE_TYPES`.

    ``fixed`` gives constant msg_ids and times (for documentation); otherwise each call makes fresh
    ids so the messages can be published and stored.
    """

    def env(**kw: object) -> dict[str, object]:
        base: dict[str, object] = {"farm_id": farm_id, "device_id": device_id}
        if fixed:
            base |= {"msg_id": _FIXED_ID, "observed_at": EXAMPLE_TIME}
        else:
            base |= {"msg_id": new_msg_id()}
        return base | kw

    model = m.ModelRef(name="leaf-disease", version="1.2.0", sha256=EXAMPLE_SHA)
    top = [
        m.LabelScore(label="Tomato___Late_blight", probability=0.87),
        m.LabelScore(label="Tomato___healthy", probability=0.09),
        m.LabelScore(label="Tomato___Septoria_leaf_spot", probability=0.04),
    ]
    jpeg = tiny_jpeg()
    manifest = example_manifest()
    out: dict[str, m.Envelope] = {
        "detection": m.Detection(
            **env(),
            model=model,
            source="cam-north",
            image_ref="cam-north/2026-06-14T093000Z.jpg",
            field_id="north-field",
            top_k=top,
            inference_ms=41.5,
        ),
        "yield": m.YieldEstimate(
            **env(),
            model=m.ModelRef(name="yield", version="0.3.1", sha256=EXAMPLE_SHA),
            field_id="north-field",
            crop="maize",
            season_start=date(2026, 4, 20),
            days_into_season=55,
            season_progress=0.37,
            expected=10.4,
            quantiles=m.YieldQuantiles(p10=8.9, p50=10.3, p90=11.8),
            unit="t/ha",
        ),
        "telemetry": m.Telemetry(
            **env(),
            field_id="north-field",
            readings=[
                m.SensorReading(sensor="soil-1", quantity="soil_moisture", value=0.31, unit="m3/m3"),
                m.SensorReading(sensor="air-1", quantity="air_temperature", value=21.4, unit="degC"),
                m.SensorReading(sensor="air-1", quantity="relative_humidity", value=68.0, unit="%"),
                m.SensorReading(sensor="leaf-1", quantity="leaf_wetness", value=0.2, unit="1"),
            ],
            sensor_health=[
                m.SensorHealth(
                    sensor="leaf-1",
                    quantity="leaf_wetness",
                    state="stuck",
                    since=datetime(2026, 6, 14, 5, 0, tzinfo=UTC),
                )
            ],
        ),
        "sample": m.Sample(
            **env(),
            reason="low_confidence",
            model=model,
            field_id="north-field",
            source="cam-north",
            predicted_label="Tomato___Late_blight",
            confidence=0.41,
            width=32,
            height=24,
            image_jpeg=jpeg,
        ),
        "status": m.Status(
            **env(),
            state="online",
            since=EXAMPLE_TIME,
            agent_version="0.1.0",
            models=[m.ActiveModel(name="leaf-disease", version="1.2.0", sha256=EXAMPLE_SHA)],
            health=m.Health(
                uptime_s=86400.0,
                cpu_percent=3.5,
                memory_rss_mb=96.0,
                disk_free_mb=12000.0,
                temperature_c=48.2,
                outbox_depth=0,
                inference_p50_ms=40.0,
                inference_p95_ms=55.0,
            ),
        ),
        "event": m.Event(
            **env(),
            level="warning",
            code="image_rejected",
            message="cam-north/IMG_0042.jpg is truncated; skipped",
            details={"reason": "truncated", "path": "IMG_0042.jpg"},
        ),
        "gateway_status": m.GatewayStatus(
            **env(),
            bridge="cloud",
            uplink="down",
            uplink_since=EXAMPLE_TIME,
            backlog_since=EXAMPLE_TIME,
            queued_bytes=1_250_000,
            queued_messages=1_800,
            disk_free_bytes=20_000_000_000,
            disk_total_bytes=32_000_000_000,
            gateway_version="0.1.0",
        ),
        "label": m.LabelMessage(
            **env(),
            sample_msg_id=_FIXED_ID,
            label="Tomato___Late_blight",
            labelled_by="agronomist",
            labelled_at=EXAMPLE_TIME,
            note="lesions on the lower leaves",
        ),
        "capture_now": m.CaptureNow(**env(), source="cam-north"),
        "reload_config": m.ReloadConfig(**env()),
        "set_log_level": m.SetLogLevel(**env(), level="debug"),
        "ping": m.Ping(**env()),
        "desired_model": m.DesiredModel(
            **(env() | {"device_id": "_fleet"}),
            model_name=manifest.name,
            version=manifest.version,
            manifest=manifest,
            artifacts=[
                m.Artifact(
                    variant="fp32",
                    url="https://registry.example.org/leaf-disease/1.2.0/model.onnx",
                    sha256=EXAMPLE_SHA,
                    size=13_600_000,
                )
            ],
            rollout=m.RolloutPolicy(percent=34),
            previous_version="1.1.0",
        ),
    }
    return out
