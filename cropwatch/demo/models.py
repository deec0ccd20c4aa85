"""The demo's models: the disease and yield models built with the trainer's CLI, then imported and
published through the registry and the real rollout path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .processes import cropwatch_command, quiet_step, run_step
from .settings import (
    CLASSES,
    EPOCHS,
    FARM_ID,
    FIELD_PHOTOS_PER_CLASS,
    IMAGE_SIZE,
    MODEL_NAME,
    MODEL_VERSION,
    PER_CLASS,
    YIELD_CUBE_ARGS,
    YIELD_NAME,
    YIELD_TRAIN_ARGS,
    YIELD_VERSION,
)

if TYPE_CHECKING:
    from rich.console import Console


def _draw_leaves(console: Console, leaves: Path, field_photos: Path) -> None:
    """The training leaves and the held-out 'field photos' the simulated camera traps drop."""
    if not leaves.is_dir():
        run_step(
            console,
            f"drawing {CLASSES} x {PER_CLASS} synthetic leaves (marked synthetic)",
            ["data", "synth-leaves", str(leaves),
             *f"--classes {CLASSES} --per-class {PER_CLASS} --size {IMAGE_SIZE} --seed 1".split()],
        )  # fmt: skip
    if not field_photos.is_dir():
        tmp = field_photos.with_name(field_photos.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        run_step(
            console,
            "drawing held-out 'field photos' for the simulated camera traps",
            ["data", "synth-leaves", str(tmp),
             *f"--classes {CLASSES} --per-class {FIELD_PHOTOS_PER_CLASS} --size 320 --seed 2 --quiet".split()],
        )  # fmt: skip
        tmp.rename(field_photos)


def build_model(root: Path, console: Console) -> tuple[Path, Path, Path]:
    """Public signing key, exported manifest and held-out field photos; built once, reused after."""
    keys, manifest = root / "keys", root / "run" / "export" / "manifest.json"
    field_photos = root / "field-photos"
    if not (keys / "cropwatch-signing.key").exists():
        run_step(console, "signing key", ["keys", "generate", "--out", str(keys)])
    public_key = keys / "cropwatch-signing.pub"
    if manifest.exists() and field_photos.is_dir():
        console.print(f"reusing the model from the first run: {manifest}")
        return public_key, manifest, field_photos
    leaves = root / "synthetic-leaves"
    _draw_leaves(console, leaves, field_photos)
    run = root / "run"
    if not (run / "run.json").exists():
        shutil.rmtree(run, ignore_errors=True)
        run_step(
            console,
            "fine-tuning EfficientNet-Lite0 from the offline ImageNet weights (CPU, a few minutes)",
            ["train", "disease", "--data", str(leaves), "--arch", "tf_efficientnet_lite0", "--epochs", str(EPOCHS),
             "--image-size", str(IMAGE_SIZE), "--batch-size", "16", "--out", str(run), "--patience", "3"],
        )  # fmt: skip
    run_step(
        console,
        "exporting signed ONNX (fp32 + int8) and checking it against torch",
        ["export", str(run), "--key", str(keys / "cropwatch-signing.key"),
         "--name", MODEL_NAME, "--version", MODEL_VERSION],
    )  # fmt: skip
    return public_key, manifest, field_photos


def build_yield_model(root: Path, console: Console, log: Path) -> Path:
    """The exported yield model's manifest: synthetic cube, training, signed export; built once, reused after."""
    folder, keys = root / "yield", root / "keys"
    manifest = folder / "run" / "export" / "manifest.json"
    if manifest.exists():
        console.print(f"yield model: reusing the one from the first run: {manifest}")
        return manifest
    folder.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    cube = folder / "season-cube.nc"
    if not cube.exists():
        console.print("yield model: drawing a synthetic season cube (20 fields x 3 seasons, marked synthetic)")
        quiet_step(log, ["data", "synth-yield", str(folder / "season-cube.tmp.nc"), *YIELD_CUBE_ARGS.split()])
        os.replace(folder / "season-cube.tmp.nc", cube)
    run = folder / "run"
    if not (run / "best.pt").exists():
        shutil.rmtree(run, ignore_errors=True)
        console.print(f"yield model: training the season network on the CPU (progress in {log})")
        quiet_step(log, ["train", "yield", "--cube", str(cube), "--output-dir", str(run), *YIELD_TRAIN_ARGS.split()])
    console.print("yield model: exporting signed ONNX and checking it against torch")
    quiet_step(log, ["export", str(run), "--key", str(keys / "cropwatch-signing.key"),
                     "--name", YIELD_NAME, "--version", YIELD_VERSION])  # fmt: skip
    console.print(f"yield model: built in {time.monotonic() - started:.0f} s")
    return manifest


def import_model(registry: Path, manifest: Path, public_key: Path) -> None:
    """Into the demo registry (a no-op when the same version is there already)."""
    subprocess.run(
        cropwatch_command("models", "--registry", str(registry), "import", str(manifest),
                          "--trusted-key", str(public_key)),
        check=True,
        capture_output=True,
    )  # fmt: skip


def publish_model(registry: Path, manifest: Path, broker_url: str, base_url: str) -> tuple[str, str]:
    """Through the real rollout path: the retained desired-model message the agents act on."""
    doc = json.loads(manifest.read_text(encoding="utf-8"))
    subprocess.run(
        cropwatch_command("models", "--registry", str(registry), "publish", doc["name"], doc["version"],
                          "--farm", FARM_ID, "--broker", broker_url, "--base-url", base_url),
        check=True,
        capture_output=True,
    )  # fmt: skip
    return str(doc["name"]), str(doc["version"])
