"""`cropwatch data import` for each source layout, on small trees built here in that layout.

Every tree holds, besides its good photos, one corrupt, one truncated, one empty and one non-image
file, one exact duplicate and one near-duplicate (resized and re-encoded), and the tests check the
card's numbers for each.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from cloud_trainer.datasets import plantvillage
from cloud_trainer.disease import dataset as ds
from cropwatch import data_cli
from tests.leaf_fixtures import BAD, add_bad_files, near_copy, write_jpeg

UUID = "0a0d6a11-ddd6-4dac-8469-d5f65af5afca"


def _pv_name(n: int, series: str, number: int, rest: str = "") -> str:
    return f"{UUID[:-4]}{n:04d}___{series} {number}{rest}.JPG"


def _run(*argv: str) -> int:
    return data_cli.main(["import", *argv], "cropwatch data")


def _index(out: Path) -> list[dict[str, str]]:
    with (out / "index.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def _card(out: Path) -> dict:
    return json.loads((out / "card.json").read_text())


def _assert_common(card: dict, images: int, near_pairs: int = 1) -> None:
    assert card["images"] == images
    assert card["skipped"] == BAD and card["skipped_total"] == 4
    assert card["exact_duplicates_removed"] == 1
    assert card["near_duplicates"]["pairs"] == near_pairs
    assert card["label_conflicts_removed"] == 0


def _assert_groups_stay_together(out: Path) -> dict[str, list[ds.Sample]]:
    data = ds.load_dataset(out)
    assert data.source == "import"
    split = ds.stratified_split(data, seed=3)
    side: dict[str, set[str]] = defaultdict(set)
    for name, samples in split.items():
        for s in samples:
            side[s.group].add(name)
    assert all(len(v) == 1 for v in side.values()), {g: v for g, v in side.items() if len(v) > 1}
    assert sum(len(v) for v in split.values()) == len(data.samples)
    return split


def test_plantvillage_original_layout_groups_photos_of_one_leaf(tmp_path: Path) -> None:
    src = tmp_path / "PlantVillage-Dataset"
    classes = {"Tomato___Late_blight": "RS_Late.B", "Apple___Cedar_apple_rust": "FREC_C.Rust"}
    # Photo numbers in runs: 5001-5004 one leaf, 5012-5013 the next, then single shots.
    numbers = [5001, 5002, 5003, 5004, 5012, 5013, 5025, 5031, 5044, 5057]
    seed = 0
    for cls, series in classes.items():
        folder = src / "raw" / "color" / cls
        for n in numbers:
            seed += 1
            write_jpeg(folder / _pv_name(seed, series, n), seed)
        # Kaggle's augmented copy of photo 5025: a flipped image, same photo, same group.
        seed += 1
        write_jpeg(folder / _pv_name(seed, series, 5025, "_flipLR"), seed)
        # The segmented variant of the same photos must not be imported.
        write_jpeg(src / "raw" / "segmented" / cls / _pv_name(seed, series, 5001, "_final_masked"), 999 + seed)
    tomato = src / "raw" / "color" / "Tomato___Late_blight"
    first = sorted(tomato.iterdir())[0]
    shutil.copyfile(first, tomato / _pv_name(90, "RS_Late.B", 5090))  # exact duplicate
    near_copy(sorted(tomato.iterdir())[3], tomato / _pv_name(91, "RS_Late.B", 5091))
    add_bad_files(tomato, 77)

    out = tmp_path / "pv"
    assert _run("plantvillage", str(src), "--out", str(out)) == 0
    card = _card(out)
    _assert_common(card, images=2 * 11 + 1)
    assert card["classes"] == {"Apple___Cedar_apple_rust": 11, "Tomato___Late_blight": 12}
    assert card["sources"]["plantvillage"]["domain"] == "lab"
    assert "CC BY-SA 3.0" in card["sources"]["plantvillage"]["licence"]
    rows = _index(out)
    assert {r["domain"] for r in rows} == {"lab"} and {r["source"] for r in rows} == {"plantvillage"}
    groups = defaultdict(set)
    for r in rows:
        groups[r["group"]].add(Path(r["path"]).name)
    leaf = next(g for g in groups if g.endswith("Tomato___Late_blight:rs_late.b:5000"))
    # 5001-5004, and 5091, the near-duplicate of 5004, joined to its group.
    assert sorted(n.split()[-1] for n in groups[leaf]) == ["5001.JPG", "5002.JPG", "5003.JPG", "5004.JPG", "5091.JPG"]
    flip = [r["group"] for r in rows if "_flipLR" in r["path"] and r["label"] == "Apple___Cedar_apple_rust"]
    plain = [r["group"] for r in rows if r["path"].endswith(" 5025.JPG") and r["label"] == "Apple___Cedar_apple_rust"]
    assert flip == plain
    _assert_groups_stay_together(out)
    assert "Tomato___Late_blight" in (out / "card.md").read_text()


def test_plantvillage_kaggle_copy_with_renamed_folders_and_files(tmp_path: Path) -> None:
    src = tmp_path / "New Plant Diseases Dataset(Augmented)"
    for split, count in (("train", 6), ("valid", 3)):
        for j, folder in enumerate(("Tomato_Bacterial_spot", "Pepper__bell___healthy")):
            for i in range(count):
                write_jpeg(src / split / folder / f"image ({i}).JPG", 100 * j + 10 * (split == "valid") + i)
    write_jpeg(src / "test" / "test" / "TomatoHealthy1.JPG", 555)  # unlabelled
    train = src / "train" / "Tomato_Bacterial_spot"
    shutil.copyfile(train / "image (0).JPG", src / "valid" / "Tomato_Bacterial_spot" / "image (9).JPG")
    near_copy(train / "image (1).JPG", train / "image (7).JPG")
    add_bad_files(train, 5)

    out = tmp_path / "pv"
    assert _run("plantvillage", str(src), "--out", str(out)) == 0
    card = _card(out)
    _assert_common(card, images=18 + 1)
    assert card["class_mapping"] == {
        "Pepper__bell___healthy": "Pepper,_bell___healthy",
        "Tomato_Bacterial_spot": "Tomato___Bacterial_spot",
    }
    assert card["unlabelled_files_not_imported"] == 1
    rows = _index(out)
    assert {r["source_split"] for r in rows} == {"train", "val"}
    # Renamed files carry no photo number: each is its own group, except the near-duplicate pair.
    assert len({r["group"] for r in rows}) == len(rows) - 1
    _assert_groups_stay_together(out)


def test_photo_ids_from_real_plantvillage_names() -> None:
    assert plantvillage.photo_id(Path(f"{UUID}___RS_HL 2002.JPG")) == ("rs_hl", 2002)
    assert plantvillage.photo_id(Path(f"{UUID}___UF.GRC_BS_Lab Leaf 9285.JPG")) == ("uf.grc_bs_lab leaf", 9285)
    assert plantvillage.photo_id(Path(f"{UUID}___FREC_C.Rust 3656_flipLR.JPG")) == ("frec_c.rust", 3656)
    assert plantvillage.photo_id(Path(f"{UUID}___RS_HL 5531 1.JPG")) == ("rs_hl", 5531)
    assert plantvillage.photo_id(Path("image (3).JPG")) is None
    assert plantvillage.class_id("Tomato_Spider_mites_Two_spotted_spider_mite") == (
        "Tomato___Spider_mites Two-spotted_spider_mite"
    )


def test_plantvillage_leaf_map_gives_exact_leaves(tmp_path: Path) -> None:
    folder = tmp_path / "color" / "Potato___Early_blight"
    for i, n in enumerate((7550, 7551, 7554, 7557, 7560, 7571, 7582)):
        write_jpeg(folder / _pv_name(i, "RS_Early.B", n), i)
    leaf_map = tmp_path / "leaf-map.json"
    leaf_map.write_text(
        json.dumps(
            {"rs_early.b 7550": ["Potato___Early_blight:::114.0"], "rs_early.b 7551": ["Potato___Early_blight:::115.0"]}
        )
    )
    out = tmp_path / "out"
    assert _run("plantvillage", str(tmp_path / "color"), "--out", str(out), "--leaf-map", str(leaf_map)) == 0
    groups = {Path(r["path"]).name.split()[-1]: r["group"] for r in _index(out)}
    assert groups["7550.JPG"].endswith("leaf 114.0") and groups["7551.JPG"].endswith("leaf 115.0")
    assert groups["7554.JPG"] == groups["7557.JPG"]  # the window of 10 for photos the map does not name
    assert "2 photos by --leaf-map" in _card(out)["grouping"]


def test_plantdoc_maps_names_and_keeps_unmapped_classes(tmp_path: Path) -> None:
    src = tmp_path / "PlantDoc-Dataset"
    seed = 200
    for split, count in (("train", 5), ("test", 2)):
        for folder in ("Tomato leaf late blight", "Corn rust leaf", "Banana leaf streak"):
            for i in range(count):
                seed += 1
                write_jpeg(src / split / folder / f"{folder.split()[0].lower()}-{split}-{i}.jpg", seed)
    train = src / "train" / "Tomato leaf late blight"
    # PlantDoc's own known fault: the same file in train and test.
    shutil.copyfile(train / "tomato-train-0.jpg", src / "test" / "Tomato leaf late blight" / "tylcv-seminar-1-638.jpg")
    near_copy(train / "tomato-train-1.jpg", train / "tomato-train-1-small.jpg")
    add_bad_files(src / "test" / "Corn rust leaf", 9)

    out = tmp_path / "pd"
    assert _run("plantdoc", str(src), "--out", str(out)) == 0
    card = _card(out)
    _assert_common(card, images=3 * 7 + 1)
    assert card["classes"] == {"Banana leaf streak": 7, "Corn_(maize)___Common_rust_": 7, "Tomato___Late_blight": 8}
    assert card["unmapped_classes"] == ["Banana leaf streak"]
    assert card["class_mapping"]["Tomato leaf late blight"] == "Tomato___Late_blight"
    assert card["sources"]["plantdoc"]["domain"] == "field"
    rows = _index(out)
    assert {r["domain"] for r in rows} == {"field"}
    assert {r["original_label"] for r in rows if r["label"] == "Corn_(maize)___Common_rust_"} == {"Corn rust leaf"}
    split = _assert_groups_stay_together(out)
    pair = [s for s in ds.load_dataset(out).samples if "tomato-train-1" in s.rel]
    assert len(pair) == 2 and pair[0].group == pair[1].group
    assert sum(s.rel in {p.rel for p in pair} for s in split["train"]) in (0, 2)


def test_ibean_original_and_team_layouts(tmp_path: Path) -> None:
    src = tmp_path / "ibean"
    seed = 300
    for split in ("train", "validation", "test"):
        for folder in ("angular_leaf_spot", "bean_rust", "healthy"):
            for i in range(3):
                seed += 1
                write_jpeg(src / split / folder / f"{folder}_{split}.{i}.jpg", seed)
    train = src / "train" / "healthy"
    shutil.copyfile(train / "healthy_train.0.jpg", train / "healthy_train.9.jpg")
    near_copy(train / "healthy_train.1.jpg", src / "test" / "healthy" / "healthy_test.8.jpg")
    add_bad_files(src / "validation" / "bean_rust", 11)

    out = tmp_path / "ib"
    assert _run("ibean", str(src), "--out", str(out)) == 0
    card = _card(out)
    _assert_common(card, images=28)
    assert card["classes"] == {"Bean___Angular_leaf_spot": 9, "Bean___Rust": 9, "Bean___healthy": 10}
    assert card["unmapped_classes"] == []
    assert {r["source_split"] for r in _index(out)} == {"train", "val", "test"}
    _assert_groups_stay_together(out)

    team = tmp_path / "leaf_field_dev"
    for split in ("train", "test"):
        for folder in ("bean_angular_leaf_spot", "bean_rust", "bean_healthy"):
            for i in range(3):
                seed += 1
                write_jpeg(team / split / folder / f"{folder}_{split}_{i}.jpg", seed)
    out2 = tmp_path / "team"
    assert _run("ibean", str(team), "--out", str(out2)) == 0
    assert _card(out2)["classes"] == {"Bean___Angular_leaf_spot": 6, "Bean___Rust": 6, "Bean___healthy": 6}


def test_cassava_from_the_kaggle_csv(tmp_path: Path) -> None:
    src = tmp_path / "cassava-leaf-disease-classification"
    names = {"0": "Cassava Bacterial Blight (CBB)", "3": "Cassava Mosaic Disease (CMD)", "4": "Healthy"}
    (src / "train_images").mkdir(parents=True)
    (src / "label_num_to_disease_map.json").write_text(json.dumps(names))
    rows = []
    for i in range(12):
        label = ["0", "3", "4"][i % 3]
        rows.append((f"{1000 + i}.jpg", label))
        write_jpeg(src / "train_images" / f"{1000 + i}.jpg", 400 + i)
    shutil.copyfile(src / "train_images" / "1000.jpg", src / "train_images" / "2000.jpg")
    near_copy(src / "train_images" / "1001.jpg", src / "train_images" / "2001.jpg")
    add_bad_files(src / "train_images", 13)
    rows += [("2000.jpg", "0"), ("2001.jpg", "3")]
    rows += [(name, "4") for name in ("corrupt.jpg", "truncated.jpg", "empty.jpg", "notes.txt")]
    rows += [("gone.jpg", "0"), ("1011.jpg", "7")]  # a missing file, an unknown label number
    (src / "train.csv").write_text("image_id,label\n" + "".join(f"{a},{b}\n" for a, b in rows))

    out = tmp_path / "cv"
    assert _run("cassava", str(src), "--out", str(out)) == 0
    card = _card(out)
    assert card["skipped"] == {**BAD, "missing_file": 1, "unknown_label": 1}
    assert card["images"] == 13 and card["exact_duplicates_removed"] == 1 and card["near_duplicates"]["pairs"] == 1
    assert card["classes"] == {"Cassava___Bacterial_blight": 4, "Cassava___Mosaic_disease": 5, "Cassava___healthy": 4}
    assert card["class_mapping"]["3 Cassava Mosaic Disease (CMD)"] == "Cassava___Mosaic_disease"
    assert {r["domain"] for r in _index(out)} == {"field"}
    _assert_groups_stay_together(out)


def test_generic_csv_with_groups_through_the_cli_process(tmp_path: Path) -> None:
    photos = tmp_path / "my photos"
    lines = ["path,label,group"]
    for i in range(12):
        label = "Tomato___Late_blight" if i % 2 else "Tomato___healthy"
        write_jpeg(photos / f"IMG_{i:04d}.jpg", 500 + i)
        lines.append(f"my photos/IMG_{i:04d}.jpg,{label},plant{i // 4}")
    shutil.copyfile(photos / "IMG_0000.jpg", photos / "IMG_0100.jpg")
    near_copy(photos / "IMG_0001.jpg", photos / "IMG_0101.jpg")
    add_bad_files(photos, 15)
    lines += ["my photos/IMG_0100.jpg,Tomato___healthy,", "my photos/IMG_0101.jpg,Tomato___Late_blight,"]
    lines += [f"my photos/{n},Tomato___healthy," for n in ("corrupt.jpg", "truncated.jpg", "empty.jpg", "notes.txt")]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")

    out = tmp_path / "mine"
    cmd = [sys.executable, "-m", "cropwatch", "data", "import", "csv", str(tmp_path / "labels.csv"), "--out", str(out)]
    missing = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "--domain" in missing.stderr
    done = subprocess.run(
        [*cmd, "--domain", "field", "--source", "Farm A"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "13 images in 2 classes" in done.stdout
    card = _card(out)
    _assert_common(card, images=13)
    assert card["sources"] == {
        "farm-a": {"images": 13, "domain": "field", "licence": "not stated", "attribution": "", "url": ""}
    }
    rows = _index(out)
    assert {r["source"] for r in rows} == {"farm-a"}
    assert len({r["group"] for r in rows if r["group"].startswith("farm-a:Tomato___healthy:plant")}) == 3
    _assert_groups_stay_together(out)


def test_generic_folders_and_a_refused_out_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "greenhouse"
    for i in range(8):
        write_jpeg(src / ("rust" if i % 2 else "healthy") / f"p{i}.png", 600 + i)
    shutil.copyfile(src / "rust" / "p1.png", src / "rust" / "p1 copy.png")
    near_copy(src / "healthy" / "p0.png", src / "healthy" / "p0-small.jpg")
    add_bad_files(src / "rust", 17)
    out = tmp_path / "gh"
    assert _run("folders", str(src), "--out", str(out), "--domain", "lab") == 0
    card = _card(out)
    _assert_common(card, images=9)
    assert card["sources"]["greenhouse"]["domain"] == "lab"
    assert _run("folders", str(src), "--out", str(out), "--domain", "lab") == 2
    assert "not an empty folder" in capsys.readouterr().err


def test_identical_bytes_under_two_labels_are_dropped(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(4):
        write_jpeg(src / "a" / f"{i}.jpg", 700 + i)
        write_jpeg(src / "b" / f"{i}.jpg", 710 + i)
    shutil.copyfile(src / "a" / "0.jpg", src / "b" / "x.jpg")
    out = tmp_path / "out"
    assert _run("folders", str(src), "--out", str(out), "--domain", "field") == 0
    card = _card(out)
    assert card["label_conflicts_removed"] == 2 and card["images"] == 7
    assert not (out / "a" / "0.jpg").exists()


def test_near_pairs_match_brute_force() -> None:
    import random

    from cloud_trainer.datasets.dedupe import near_pairs

    rng = random.Random(4)
    hashes = [rng.getrandbits(64) for _ in range(300)]
    # Plant close relatives: flip up to 5 bits of some hashes.
    for i in range(0, 300, 7):
        h = hashes[i]
        for bit in rng.sample(range(64), rng.randint(0, 5)):
            h ^= 1 << bit
        hashes.append(h)
    for threshold in (0, 3, 4, 6):
        brute = [
            (i, j, (hashes[i] ^ hashes[j]).bit_count())
            for i in range(len(hashes))
            for j in range(i + 1, len(hashes))
            if (hashes[i] ^ hashes[j]).bit_count() <= threshold
        ]
        assert near_pairs(hashes, threshold) == brute


def test_grouped_split_names_a_class_with_too_few_leaves(tmp_path: Path) -> None:
    samples = [
        ds.Sample(tmp_path / f"{c}{i}.jpg", c, f"{c}/{i}.jpg", group=f"{c}:{i // 3}") for c in "ab" for i in range(6)
    ]
    data = ds.LeafDataset(root=tmp_path, samples=samples, classes=["a", "b"])
    with pytest.raises(ds.DatasetError, match=r"class 'a' has 6 images in 2 leaf groups"):
        ds.stratified_split(data)
