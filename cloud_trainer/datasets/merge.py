"""``cropwatch data merge``: several imported sets into one training set with a class map.

Each input is a folder written by ``cropwatch data import`` (its ``index.csv`` and ``card.json``). The
merge runs the same checks as an import over the union, so an image present in two inputs (PlantVillage
and a per-crop repackaging of it) is kept once, from the first input that has it; every image keeps
its domain, source and split group, and ``class_map.json`` gives each class its output index and the
sources that hold it.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from shared.fsutil import atomic_write_text

from .card import CARD_JSON
from .core import INDEX, Candidate, Collected, DatasetImportError, SourceInfo, import_images

CLASS_MAP = "class_map.json"


def _sources(folder: Path) -> dict[str, SourceInfo]:
    try:
        card = json.loads((folder / CARD_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetImportError(
            f"{folder}: cannot read {CARD_JSON} ({exc}); merge takes folders made by data import"
        ) from exc
    return {
        name: SourceInfo(name, s["domain"], s.get("licence", ""), s.get("attribution", ""), s.get("url", ""))
        for name, s in card.get("sources", {}).items()
    }


def collect(inputs: list[Path]) -> Collected:
    sources: dict[str, SourceInfo] = {}
    found: list[Candidate] = []
    for folder in inputs:
        index = folder / INDEX
        if not index.is_file():
            raise DatasetImportError(
                f"{folder} has no {INDEX}: it is not an imported dataset; run cropwatch data import first"
            )
        for name, info in _sources(folder).items():
            if name in sources and sources[name].domain != info.domain:
                raise DatasetImportError(
                    f"source {name!r} is {sources[name].domain} in one input and {info.domain} in {folder}; "
                    "re-import one of them with another --source name"
                )
            sources.setdefault(name, info)
        with index.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                if row["source"] not in sources:
                    raise DatasetImportError(f"{index}: source {row['source']!r} is not in {folder / CARD_JSON}")
                found.append(
                    Candidate(
                        folder / row["path"],
                        row["label"],
                        row["source"],
                        row.get("source_split", ""),
                        row.get("group", ""),
                        row.get("original_label", ""),
                    )
                )
    notes = {"merged_from": [str(p) for p in inputs], "grouping": "each input's split groups, kept"}
    return Collected("merge", Path(", ".join(str(p) for p in inputs)), sources, found, notes=notes, ordered=True)


def class_map(out: Path) -> dict[str, Any]:
    """class_map.json from the merged index: class id -> output index, and the sources and domains per class."""
    per_class: dict[str, set[str]] = defaultdict(set)
    domains: dict[str, set[str]] = defaultdict(set)
    with (out / INDEX).open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            per_class[row["label"]].add(row["source"])
            domains[row["label"]].add(row["domain"])
    classes = sorted(per_class)
    result = {
        "classes": {c: i for i, c in enumerate(classes)},
        "sources": {c: sorted(per_class[c]) for c in classes},
        "domains": {c: sorted(domains[c]) for c in classes},
    }
    atomic_write_text(out / CLASS_MAP, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return result


def merge(inputs: list[Path], out: Path, near_threshold: int = 4) -> dict[str, Any]:
    if len(inputs) < 1:
        raise DatasetImportError("merge needs at least one imported folder")
    if any(p.resolve() == out.resolve() for p in inputs):
        raise DatasetImportError(f"--out {out} is one of the inputs; choose a new folder")
    card = import_images(collect(inputs), out, near_threshold)
    card["class_map"] = class_map(out)
    return card
