"""Import lab and field sets, merge them, train a tiny model on the merge: the report splits by domain and source."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from cloud_trainer import train_cli
from cropwatch import data_cli
from tests.leaf_fixtures import write_jpeg

torch.set_num_threads(1)

TINY = ["--image-size", "32", "--batch-size", "8", "--threads", "1", "--quiet", "--pretrained", "none"]
# This file is about the report by domain and source: no trust head, no field recipe (each is tested elsewhere).
TINY += ["--abstain-score", "energy", "--no-field-background", "--no-shadows", "--no-perspective", "--no-jpeg"]
TINY += ["--no-balanced"]
UUID = "6f0c4e1a-2b7d-4c55-9a0e-3d1f8b2c"


@pytest.fixture(scope="module")
def merged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("imports")
    lab, field = base / "PlantVillage" / "raw" / "color", base / "PlantDoc"
    seed = 1000
    for cls, series in (("Tomato___Late_blight", "RS_Late.B"), ("Tomato___healthy", "RS_HL")):
        # Two shots of each of 6 leaves (photo numbers 10 apart between leaves).
        for leaf in range(6):
            for shot in range(2):
                seed += 1
                write_jpeg(lab / cls / f"{UUID}{seed:04d}___{series} {5000 + 10 * leaf + shot}.JPG", seed)
    for folder in ("Tomato leaf late blight", "Tomato leaf"):
        for _ in range(8):
            seed += 1
            write_jpeg(field / "train" / folder / f"web-{seed}.jpg", seed)
    # One lab photo also sits in the field set (a scrape of PlantVillage): the merge keeps one copy.
    first = sorted((lab / "Tomato___healthy").iterdir())[0]
    shutil.copyfile(first, field / "train" / "Tomato leaf" / "scraped.jpg")
    out = {"pv": base / "pv", "pd": base / "pd", "all": base / "all"}
    assert data_cli.main(["import", "plantvillage", str(base / "PlantVillage"), "--out", str(out["pv"])], "t") == 0
    assert data_cli.main(["import", "plantdoc", str(field), "--out", str(out["pd"])], "t") == 0
    assert data_cli.main(["merge", str(out["pv"]), str(out["pd"]), "--out", str(out["all"])], "t") == 0
    return out


def test_merge_keeps_domain_source_and_groups_and_writes_a_class_map(merged: dict[str, Path]) -> None:
    card = json.loads((merged["all"] / "card.json").read_text())
    assert card["images"] == 24 + 16 and card["exact_duplicates_removed"] == 1
    assert card["domains"] == {"field": 16, "lab": 24}
    assert set(card["sources"]) == {"plantvillage", "plantdoc"}
    assert card["counts_by_class_and_source"]["Tomato___healthy"] == {"plantdoc": 8, "plantvillage": 12}
    class_map = json.loads((merged["all"] / "class_map.json").read_text())
    assert class_map["classes"] == {"Tomato___Late_blight": 0, "Tomato___healthy": 1}
    assert class_map["sources"]["Tomato___healthy"] == ["plantdoc", "plantvillage"]
    with (merged["all"] / "index.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    lab_groups = {r["group"] for r in rows if r["domain"] == "lab"}
    assert len(lab_groups) == 12  # two shots per leaf, one group per leaf, as imported
    with (merged["pv"] / "index.csv").open(newline="") as fh:
        assert lab_groups == {r["group"] for r in csv.DictReader(fh)}


def test_tiny_run_reports_accuracy_per_domain_and_source(merged: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    argv = ["disease", "--data", str(merged["all"]), "--arch", "mobilenetv3_large_100", "--epochs", "1"]
    assert train_cli.main([*argv, "--out", str(run), *TINY], "cropwatch train") == 0
    assert json.loads((run / "dataset.json").read_text())["domains"] == {"field": 16, "lab": 24}
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    by_domain, by_source = metrics["test_by_domain"], metrics["test_by_source"]
    assert set(by_domain) == {"lab", "field"} and set(by_source) == {"plantvillage", "plantdoc"}
    assert by_domain["lab"]["n"] + by_domain["field"]["n"] == metrics["test"]["n"]
    assert by_domain["lab"]["n"] == by_source["plantvillage"]["n"]
    correct = sum(m["accuracy"] * m["n"] for m in by_domain.values())
    assert abs(correct / metrics["test"]["n"] - metrics["test"]["accuracy"]) < 1e-9
    report = (run / "eval" / "report.md").read_text()
    assert "| test domain | images | accuracy |" in report and "| field |" in report
    assert "| test source |" in report and "| plantdoc |" in report
    info = json.loads((run / "run.json").read_text())
    assert info["metrics"]["test_accuracy_domain_field"] == by_domain["field"]["accuracy"]
    # Both shots of a leaf land in the same split.
    with (run / "split.csv").open(newline="") as fh:
        split = {row["path"]: row["split"] for row in csv.DictReader(fh)}
    with (merged["all"] / "index.csv").open(newline="") as fh:
        sides: dict[str, set[str]] = {}
        for row in csv.DictReader(fh):
            sides.setdefault(row["group"], set()).add(split[row["path"]])
    assert all(len(s) == 1 for s in sides.values())
