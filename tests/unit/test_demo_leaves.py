"""The demo's real leaves: a fixed split of the shipped sample, and camera frames that never repeat."""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path

from PIL import Image

from cloud_trainer.disease import LEAF_SAMPLE
from cropwatch.demo.leaves import copy_held_out, reshoot, split_sample, write_split
from cropwatch.demo.settings import HELD_OUT_PER_CLASS, VAL_PER_CLASS


def test_split_is_fixed_per_class_and_disjoint(tmp_path: Path) -> None:
    split = split_sample()
    assert split == split_sample()  # the same on every run: a reused model and its photos agree
    classes = {label for label, _ in split["train"]}
    assert len(classes) == 9
    for label in classes:
        assert sum(1 for c, _ in split["test"] if c == label) == HELD_OUT_PER_CLASS
        assert sum(1 for c, _ in split["val"] if c == label) == VAL_PER_CLASS
    paths = [p for items in split.values() for _, p in items]
    assert len(paths) == len(set(paths)) == 108
    write_split(split, LEAF_SAMPLE, tmp_path / "split.csv")
    with (tmp_path / "split.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["split"] for r in rows} == {"train", "val", "test"} and len(rows) == 108
    assert all((LEAF_SAMPLE / r["path"]).is_file() and r["path"].startswith(r["label"] + "/") for r in rows)
    copy_held_out(split, tmp_path / "photos")
    held = sorted(p.name for p in (tmp_path / "photos").rglob("*.JPG"))
    assert held == sorted(p.name for _, p in split["test"])


def test_camera_frames_differ_and_decode() -> None:
    src = split_sample()["test"][0][1]
    rng = random.Random(0)
    frames = [reshoot(src, rng) for _ in range(5)]
    assert len(set(frames)) == 5
    for frame in frames:
        with Image.open(io.BytesIO(frame)) as img:
            assert img.format == "JPEG" and img.mode == "RGB" and 150 <= img.width <= 400
