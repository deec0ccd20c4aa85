"""Helpers for the retraining tests: a tiny base run, field photos with a look it never saw, stored samples.

The "field look" is what makes the base model wrong for one class: leaves of that class photographed
under a strong magenta grow-light cast, which the synthetic training set never shows. Fine-tuning on
a few labelled field photos teaches the model the look; the other classes keep their usual look.
"""

from __future__ import annotations

import io
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from cloud_trainer import train_cli
from cloud_trainer.disease.synth import CONDITIONS, SYNTHETIC_PREFIX, draw_leaf
from cropwatch import data_cli
from farm_monitor.config import MonitorConfig
from farm_monitor.db import make_engine, migrate
from farm_monitor.ingest.metrics import Metrics
from farm_monitor.ingest.pipeline import Ingestor
from shared import messages as m
from shared.ids import new_msg_id
from shared.topics import device_topic

CLASSES = 3
SIZE = 64
TINY = ["--image-size", str(SIZE), "--batch-size", "8", "--threads", "1", "--quiet"]
ARCH = "tf_efficientnet_lite0"
CONFUSED = SYNTHETIC_PREFIX + "Leaf_spot"  # the class whose field look the base model never saw


def class_names() -> list[str]:
    return sorted(SYNTHETIC_PREFIX + c for c in list(CONDITIONS)[:CLASSES])


def field_look(img: Image.Image) -> Image.Image:
    """A magenta grow-light cast and a camera out of focus: the base model calls none of these Leaf_spot."""
    a = np.asarray(img, dtype=np.float32)
    grey = a.mean(axis=2, keepdims=True)
    tinted = 0.35 * a + 0.65 * grey * np.array([1.45, 0.55, 1.35], dtype=np.float32)
    return Image.fromarray(tinted.clip(0, 255).astype(np.uint8), "RGB").filter(ImageFilter.GaussianBlur(2.0))


def field_jpeg(label: str, index: int, seed: int = 7, size: int = 48) -> bytes:
    """A field photo of ``label`` (a class name); the CONFUSED class gets the field look."""
    condition = label.removeprefix(SYNTHETIC_PREFIX)
    rng = random.Random(f"field:{seed}:{condition}:{index}")
    img = draw_leaf(condition, rng, size)
    if label == CONFUSED:
        img = field_look(img)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_base_run(root: Path, per_class: int = 60, epochs: int = 10) -> Path:
    data = root / "leaves"
    argv = ["synth-leaves", str(data), "--classes", str(CLASSES), "--per-class", str(per_class), "--size", "40"]
    assert data_cli.main([*argv, "--quiet"], "t") == 0
    run = root / "base-run"
    # Energy abstention, no leaf gate: the gate learns "leaf" from these 40 px drawings and then
    # calls the drawn field photos (other backgrounds) not a leaf, which are never sampled for labels.
    # The field recipe off: pasting 40 px drawings on textures tests nothing here; these tests are
    # about the retraining loop, and the recipe's own figures are in docs/disease-model.md.
    recipe_off = ["--no-field-background", "--no-shadows", "--no-perspective", "--no-jpeg", "--no-balanced"]
    rc = train_cli.main(
        ["disease", "--data", str(data), "--arch", ARCH, "--epochs", str(epochs), "--out", str(run), "--lr", "3e-3",
         "--abstain-score", "energy", *recipe_off, *TINY],
        "cropwatch train",
    )  # fmt: skip
    assert rc == 0
    return run


def store_samples(db_url: str, farm: str, device: str, per_class: int, model_version: str = "1.0.0",
                  seed: int = 7, extra: list[tuple[bytes, str]] = ()) -> list[tuple[str, str]]:  # fmt: skip
    """Field samples stored through ingest's own code (plus ``extra`` (jpeg, label)); returns (msg_id, label)."""
    cfg = MonitorConfig.model_validate({"database": {"url": db_url}})
    engine = make_engine(cfg.database, writer=True)
    migrate(engine)
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    model = m.ModelRef(name="leaf-disease", version=model_version, sha256="0" * 64)
    msgs, truth = [], []
    photos = [(field_jpeg(label, i, seed), label) for label in class_names() for i in range(per_class)]
    for jpeg, label in [*photos, *extra]:
        sample = m.Sample(
            farm_id=farm, device_id=device, msg_id=new_msg_id(), observed_at=now + timedelta(seconds=len(msgs)),
            reason="low_confidence", model=model, source="cam", predicted_label=label, confidence=0.4,
            width=48, height=48, image_jpeg=jpeg,
        )  # fmt: skip
        msgs.append(sample)
        truth.append((sample.msg_id, label))
    ingest = Ingestor(cfg, engine, Metrics())
    items = [(device_topic(x.farm_id, x.device_id, x.kind), x.to_json(), i, 1, 0, 0.0) for i, x in enumerate(msgs)]
    assert ingest.process(items)
    engine.dispose()
    return truth
