from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cloud_trainer.disease import synth


def test_generates_class_folders_marked_synthetic(tmp_path: Path) -> None:
    info = synth.generate(tmp_path, classes=3, per_class=2, size=32, seed=1, progress=False)
    folders = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert folders == sorted(info["classes"])
    assert all(f.startswith(synth.SYNTHETIC_PREFIX) for f in folders)
    assert json.loads((tmp_path / "dataset.json").read_text())["synthetic"] is True
    assert (tmp_path / synth.SYNTHETIC_MARKER).is_file()
    images = sorted(tmp_path.glob("*/*.jpg"))
    assert len(images) == 6
    with Image.open(images[0]) as img:
        assert img.size == (32, 32)
        assert b"synthetic" in img.info.get("comment", b"")
    rows = (tmp_path / "labels.csv").read_text().splitlines()
    assert rows[0] == "path,label" and len(rows) == 7


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a = synth.draw_leaf("Rust", random.Random("x"), 48)
    b = synth.draw_leaf("Rust", random.Random("x"), 48)
    c = synth.draw_leaf("Rust", random.Random("y"), 48)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_lesions_change_the_leaf() -> None:
    # Same nuisance draw, different condition: the class must show up in the pixels.
    healthy = np.asarray(synth.draw_leaf("healthy", random.Random("k"), 64), dtype=np.int16)
    for condition in ("Leaf_spot", "Blight", "Rust", "Yellowing"):
        sick = np.asarray(synth.draw_leaf(condition, random.Random("k"), 64), dtype=np.int16)
        assert np.abs(sick - healthy).mean() > 0.5, condition


@pytest.mark.parametrize("classes", [1, synth.MAX_CLASSES + 1])
def test_class_count_out_of_range_is_an_error(tmp_path: Path, classes: int) -> None:
    with pytest.raises(ValueError, match="--classes"):
        synth.generate(tmp_path, classes=classes, per_class=1, progress=False)


def test_cli_writes_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cropwatch import data_cli

    rc = data_cli.main(
        ["synth-leaves", str(tmp_path / "d"), "--classes", "2", "--per-class", "2", "--size", "24", "--quiet"],
        "cropwatch data",
    )
    assert rc == 0
    assert len(list((tmp_path / "d").glob("*/*.jpg"))) == 4
    assert data_cli.main(["nope"], "cropwatch data") == 2
