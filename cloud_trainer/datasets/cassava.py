"""Kaggle Cassava Leaf Disease Classification (2020): ``train.csv`` + ``train_images/`` + the label map.

``train.csv`` has ``image_id,label`` (a number); ``label_num_to_disease_map.json`` names the numbers
("Cassava Mosaic Disease (CMD)"), which become PlantVillage-style ids (``Cassava___Mosaic_disease``).
Photos are from farmers' fields in Uganda and name no plant: every image is its own split group.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from .core import Candidate, Collected, DatasetImportError, SourceInfo

SOURCE = SourceInfo(
    name="cassava",
    domain="field",
    licence="Kaggle competition data (Cassava Leaf Disease Classification): use under the competition's rules",
    attribution="Makerere University AI Lab and NaCRRI; Kaggle Cassava Leaf Disease Classification, 2020",
    url="https://www.kaggle.com/competitions/cassava-leaf-disease-classification",
)


def class_id(disease: str) -> str:
    """ "Cassava Brown Streak Disease (CBSD)" -> "Cassava___Brown_streak_disease"; "Healthy" -> "Cassava___healthy"."""
    name = re.sub(r"\s*\([^)]*\)", "", disease).strip()
    name = re.sub(r"^cassava\s+", "", name, flags=re.IGNORECASE)
    if name.lower() == "healthy":
        return "Cassava___healthy"
    words = name.lower().split()
    return "Cassava___" + "_".join(words).capitalize() if words else f"Cassava___{disease.strip()}"


def _label_map(src: Path) -> dict[str, str]:
    path = src / "label_num_to_disease_map.json"
    if not path.is_file():
        raise DatasetImportError(f"{src}: no label_num_to_disease_map.json; give the folder of the Kaggle download")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DatasetImportError(f"{path}: not valid JSON ({exc})") from exc
    return {str(k): str(v) for k, v in raw.items()}


def collect(src: Path) -> Collected:
    table = src / "train.csv"
    images = src / "train_images"
    if not table.is_file() or not images.is_dir():
        raise DatasetImportError(f"{src}: expected train.csv and train_images/ (the Kaggle Cassava download)")
    names = _label_map(src)
    found, skipped, listed = [], [], set()
    with table.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if not {"image_id", "label"} <= set(reader.fieldnames or []):
            raise DatasetImportError(f"{table}: needs columns image_id,label (found {reader.fieldnames})")
        for line, row in enumerate(reader, start=2):
            path = images / (row["image_id"] or "").strip()
            number = (row["label"] or "").strip()
            if number not in names:
                skipped.append(
                    {"path": str(path), "reason": "unknown_label", "detail": f"{table}:{line}: label {number!r}"}
                )
                continue
            if not path.is_file():
                skipped.append({"path": str(path), "reason": "missing_file", "detail": f"{table}:{line}"})
                continue
            listed.add(path.name)
            found.append(Candidate(path, class_id(names[number]), SOURCE.name, "train", "", names[number]))
    not_listed = sum(1 for p in images.iterdir() if p.is_file() and p.name not in listed)
    notes = {
        "class_mapping": {f"{k} {v}": class_id(v) for k, v in sorted(names.items())},
        "unmapped_classes": [],
        "unlabelled_files_not_imported": not_listed,
        "grouping": "Cassava names no plant: each image is its own split group (near-duplicates joined)",
    }
    return Collected("cassava", src, {SOURCE.name: SOURCE}, found, skipped, notes)
