"""The demo's models: the disease and yield models built with the trainer's CLI, then imported and
published through the registry and the real rollout path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cloud_trainer.disease import LEAF_SAMPLE

from .leaves import copy_held_out, split_sample, write_split
from .processes import cropwatch_command, quiet_step, run_step
from .settings import (
    EPOCHS,
    EXPORT_ARGS,
    FARM_ID,
    IMAGE_SIZE,
    MODEL_NAME,
    MODEL_VERSION,
    TRAIN_ARGS,
    YIELD_CUBE_ARGS,
    YIELD_NAME,
    YIELD_TRAIN_ARGS,
    YIELD_VERSION,
)

if TYPE_CHECKING:
    from rich.console import Console


def _held_out_accuracy(manifest: Path) -> str:
    """The exported model's accuracy on the held-out real photos (the run's test split), in words."""
    doc = json.loads(manifest.read_text(encoding="utf-8"))
    metrics = doc.get("metrics", {})
    n = int(metrics.get("test_images", 0))
    acc = float(metrics.get("onnx_fp32_test_accuracy", metrics.get("test_accuracy", 0.0)))
    return f"held-out real-photo accuracy {acc:.0%} ({round(acc * n)} of {n} photos the model never saw)"


def build_model(root: Path, console: Console) -> tuple[Path, Path, Path]:
    """Public signing key, exported manifest and held-out field photos; built once, reused after.

    The model learns the shipped PlantVillage sample minus HELD_OUT_PER_CLASS photos per class; those
    are its test split (the accuracy printed) and what the simulated cameras photograph.
    """
    keys, run = root / "keys", root / "leaf-run"
    manifest, field_photos = run / "export" / "manifest.json", root / "leaf-photos"
    if not (keys / "cropwatch-signing.key").exists():
        run_step(console, "signing key", ["keys", "generate", "--out", str(keys)])
    public_key = keys / "cropwatch-signing.pub"
    if manifest.exists() and field_photos.is_dir():
        console.print(f"reusing the model from the first run: {manifest}")
        console.print(_held_out_accuracy(manifest))
        return public_key, manifest, field_photos
    split = split_sample(LEAF_SAMPLE)
    if not field_photos.is_dir():
        copy_held_out(split, field_photos)
    if not (run / "run.json").exists():
        shutil.rmtree(run, ignore_errors=True)
        split_csv = root / "leaf-split.csv"
        write_split(split, LEAF_SAMPLE, split_csv)
        counts = {k: len(v) for k, v in split.items()}
        run_step(
            console,
            # Short: rich cuts a rule's title to the console width.
            f"training on {counts['train']} real leaf photos ({counts['val']} validation, {counts['test']} held out)",
            ["train", "disease", "--data", str(LEAF_SAMPLE), "--split", str(split_csv),
             "--arch", "tf_efficientnet_lite0", "--epochs", str(EPOCHS), "--image-size", str(IMAGE_SIZE),
             "--batch-size", "16", "--out", str(run), "--patience", "3", *TRAIN_ARGS.split(), *_quiet()],
        )  # fmt: skip
    run_step(
        console,
        "exporting signed ONNX and checking it against torch",
        # No int8: 27 test photos cannot show an int8 file within a 1-point budget (one photo is 3.7
        # points), and its calibration and check cost the first run time.
        ["export", str(run), "--key", str(keys / "cropwatch-signing.key"),
         "--name", MODEL_NAME, "--version", MODEL_VERSION, *EXPORT_ARGS.split()],
    )  # fmt: skip
    console.print(_held_out_accuracy(manifest))
    return public_key, manifest, field_photos


def _quiet() -> list[str]:
    """Progress bars when a person watches; plain lines when the console is a file or a pipe."""
    return [] if sys.stdout.isatty() else ["--quiet"]


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


def publish_model(registry: Path, manifest: Path, broker_url: str, base_url: str, db: Path) -> tuple[str, str]:
    """Through the real rollout path: the retained desired-model message the agents act on; ``--db``
    also keeps the manifest in the monitor's database, where its pages read the display names."""
    doc = json.loads(manifest.read_text(encoding="utf-8"))
    subprocess.run(
        cropwatch_command("models", "--registry", str(registry), "publish", doc["name"], doc["version"],
                          "--farm", FARM_ID, "--broker", broker_url, "--base-url", base_url,
                          "--db", f"sqlite:///{db}"),
        check=True,
        capture_output=True,
    )  # fmt: skip
    return str(doc["name"]), str(doc["version"])
