"""The demo's real leaves: the shipped PlantVillage sample split for training, and the held-out
photos the simulated cameras drop, each frame re-shot (rotated, rescaled, re-lit) so no two match."""

from __future__ import annotations

import csv
import io
import random
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from cloud_trainer.disease import LEAF_SAMPLE

from .settings import HELD_OUT_PER_CLASS, VAL_PER_CLASS

SUFFIXES = (".jpg", ".jpeg", ".png")


def leaf_photos(root: Path) -> dict[str, list[Path]]:
    """Class folder name -> its photos, sorted."""
    return {
        d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in SUFFIXES)
        for d in sorted(root.iterdir())
        if d.is_dir()
    }


def split_sample(sample: Path = LEAF_SAMPLE) -> dict[str, list[tuple[str, Path]]]:
    """Per class, a fixed shuffle (seeded by the class name): held-out test photos, validation, the rest
    training. The same on every machine and run, so a reused model and its camera photos agree."""
    out: dict[str, list[tuple[str, Path]]] = {"train": [], "val": [], "test": []}
    for label, photos in leaf_photos(sample).items():
        order = list(photos)
        random.Random(f"cropwatch-demo:{label}").shuffle(order)
        n_test, n_val = HELD_OUT_PER_CLASS, VAL_PER_CLASS
        if len(order) < n_test + n_val + 1:
            raise RuntimeError(f"{sample / label} has {len(order)} photos; the demo needs {n_test + n_val + 1}")
        out["test"] += [(label, p) for p in order[:n_test]]
        out["val"] += [(label, p) for p in order[n_test : n_test + n_val]]
        out["train"] += [(label, p) for p in order[n_test + n_val :]]
    return out


def write_split(split: dict[str, list[tuple[str, Path]]], sample: Path, path: Path) -> None:
    """The trainer's split.csv (split,label,path relative to the sample folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["split", "label", "path"])
        for name, items in split.items():
            writer.writerows([name, label, p.relative_to(sample).as_posix()] for label, p in items)


def copy_held_out(split: dict[str, list[tuple[str, Path]]], out: Path) -> None:
    """The held-out photos in class folders: what the cameras drop (never seen in training)."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for label, p in split["test"]:
        (tmp / label).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, tmp / label / p.name)
    tmp.rename(out)


def reshoot(src: Path, rng: random.Random) -> bytes:
    """One camera frame of ``src``: any rotation, 0.7-1.5x scale, brightness, contrast and colour
    jitter, JPEG quality 75-95. Hue is left alone: colour is part of the diagnosis."""
    with Image.open(src) as opened:
        img = opened.convert("RGB")
    # What the rotation uncovers takes the background's colour (the median of the four corners).
    corners = np.asarray(img)[[0, 0, -1, -1], [0, -1, 0, -1]]
    fill = tuple(int(v) for v in np.median(corners, axis=0))
    img = img.rotate(rng.uniform(0, 360), resample=Image.Resampling.BILINEAR, fillcolor=fill)
    scale = rng.uniform(0.7, 1.5)
    img = img.resize((max(32, round(img.width * scale)), max(32, round(img.height * scale))), Image.Resampling.BILINEAR)
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.7, 1.3))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.75, 1.25))
    img = ImageEnhance.Color(img).enhance(rng.uniform(0.8, 1.2))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=rng.randint(75, 95))
    return buf.getvalue()
