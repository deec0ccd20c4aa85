from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cloud_trainer.disease import dataset as ds

# PlantVillage style, with the punctuation real folder names carry.
CLASSES = [
    "Orange___Haunglongbing_(Citrus_greening)",
    "Corn___Cercospora_leaf_spot Gray_leaf_spot",
    "Pepper,_bell___healthy",
]


def _jpeg(colour: tuple[int, int, int], size: int = 20) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="JPEG")
    return buf.getvalue()


def make_tree(root: Path, per_class: int = 5) -> Path:
    for ci, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            (root / name / f"img {i}, ({ci}).jpg").write_bytes(_jpeg((40 * ci, 10 * i, 100)))
    return root


def test_class_folders_with_spaces_commas_parentheses(tmp_path: Path) -> None:
    data = ds.load_dataset(make_tree(tmp_path / "d"))
    assert data.classes == sorted(CLASSES)
    assert data.counts() == dict.fromkeys(sorted(CLASSES), 5)
    assert not data.skipped and data.source == "folder" and not data.synthetic


def test_csv_manifest_form(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "d")
    lines = ["path,label"]
    for p in sorted(root.glob("*/*.jpg")):
        lines.append(f'"{p.relative_to(root).as_posix()}","{p.parent.name}"')
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    data = ds.load_dataset(root / "labels.csv")
    assert data.source == "csv"
    assert data.counts() == dict.fromkeys(sorted(CLASSES), 5)
    assert ds.fingerprint(data) == ds.fingerprint(ds.load_dataset(root))


def test_csv_without_header_columns_is_explained(tmp_path: Path) -> None:
    (tmp_path / "l.csv").write_text("file,class\na.jpg,x\n")
    with pytest.raises(ds.DatasetError, match="'path' and 'label'"):
        ds.load_dataset(tmp_path / "l.csv")


def test_corrupt_images_are_listed_and_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_tree(tmp_path / "d")
    bad = root / CLASSES[0]
    (bad / "truncated.jpg").write_bytes(_jpeg((1, 2, 3), 64)[:200])
    (bad / "not-an-image.jpg").write_bytes(b"hello, I am text")
    (bad / "empty.png").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        data = ds.load_dataset(root)
    assert {s["path"].split("/")[-1] for s in data.skipped} == {"truncated.jpg", "not-an-image.jpg", "empty.png"}
    assert {s["reason"] for s in data.skipped} >= {"not_an_image", "empty"}
    assert data.counts()[CLASSES[0]] == 5
    assert "skipped 3 unreadable image(s)" in caplog.text


def test_class_with_one_image_is_an_error_naming_it(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "d")
    lonely = root / "Tomato___Late_blight"
    lonely.mkdir()
    (lonely / "only.jpg").write_bytes(_jpeg((9, 9, 9)))
    with pytest.raises(ds.DatasetError, match=r"'Tomato___Late_blight' has 1"):
        ds.load_dataset(root)


def test_split_is_stratified_deterministic_and_saved(tmp_path: Path) -> None:
    data = ds.load_dataset(make_tree(tmp_path / "d", per_class=10))
    a = ds.stratified_split(data, 0.2, 0.2, seed=3)
    b = ds.stratified_split(data, 0.2, 0.2, seed=3)
    c = ds.stratified_split(data, 0.2, 0.2, seed=4)
    assert [s.rel for s in a["test"]] == [s.rel for s in b["test"]]
    assert [s.rel for s in a["test"]] != [s.rel for s in c["test"]]
    for name in ds.SPLITS:
        assert {s.label for s in a[name]} == set(CLASSES)
    assert sum(len(v) for v in a.values()) == 30
    assert not {s.rel for s in a["train"]} & {s.rel for s in a["test"]}
    ds.save_split(tmp_path / "split.csv", a)
    again = ds.load_split(tmp_path / "split.csv", data)
    assert {k: [s.rel for s in v] for k, v in again.items()} == {k: [s.rel for s in v] for k, v in a.items()}


def test_fingerprint_follows_bytes_and_labels(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "d")
    fp = ds.fingerprint(ds.load_dataset(root))
    assert fp.startswith("sha256:") and fp == ds.fingerprint(ds.load_dataset(root))
    victim = next((root / CLASSES[1]).glob("*.jpg"))
    victim.write_bytes(_jpeg((250, 0, 0)))
    assert ds.fingerprint(ds.load_dataset(root)) != fp


def test_eval_images_match_the_shared_decoder(tmp_path: Path) -> None:
    from shared.image import decode_image

    data = ds.load_dataset(make_tree(tmp_path / "d"))
    s = data.samples[0]
    got = ds.make_torch_dataset([s], data.class_to_idx, 16, train=False)[0][0]
    assert np.array_equal(got.permute(1, 2, 0).numpy(), decode_image(s.path.read_bytes(), 16))
    train_img, label = ds.make_torch_dataset([s], data.class_to_idx, 16, train=True)[0]
    assert tuple(train_img.shape) == (3, 16, 16) and label == data.class_to_idx[s.label]
