"""The user's own photos: class folders (``folders``) or a ``path,label`` CSV (``csv``).

The domain (``lab`` or ``field``) is the user's to say (``--domain``); the source name defaults to the
folder's or CSV's name. A CSV may add a ``group`` column (photos of one plant share a value, kept on
one side of the split) and a ``split`` column (the source's own split, recorded).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from .core import DOMAINS, Candidate, Collected, DatasetImportError, SourceInfo, safe_label, split_name
from .layout import scan_class_folders


def source_info(src: Path, domain: str | None, name: str | None, licence: str, attribution: str) -> SourceInfo:
    if domain not in DOMAINS:
        raise DatasetImportError(f"--domain is required for your own photos: say lab or field (got {domain!r})")
    raw = name or src.stem
    cleaned = re.sub(r"[^a-z0-9_-]+", "-", raw.lower()).strip("-") or "photos"
    return SourceInfo(cleaned, domain, licence, attribution)


def collect_folders(src: Path, info: SourceInfo) -> Collected:
    if not src.is_dir():
        raise DatasetImportError(f"{src} is not a folder; folders takes a folder of class folders")
    scan = scan_class_folders(src, info.name, safe_label)
    notes = {
        "unlabelled_files_not_imported": scan.unlabelled_files,
        "grouping": "one split group per image (near-duplicates joined); the csv format's group column names plants",
    }
    return Collected("folders", src, {info.name: info}, scan.candidates, notes=notes)


def collect_csv(src: Path, info: SourceInfo) -> Collected:
    if not src.is_file():
        raise DatasetImportError(f"{src} is not a file; csv takes a CSV with a header and columns path,label")
    found, skipped = [], []
    with src.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = {(c or "").strip().lower(): c for c in reader.fieldnames or []}
        if "path" not in columns or "label" not in columns:
            raise DatasetImportError(f"{src}: needs a header with columns path and label (found {reader.fieldnames})")
        for line, row in enumerate(reader, start=2):
            value = {k: (row.get(c) or "").strip() for k, c in columns.items()}
            path = Path(value["path"])
            path = path if path.is_absolute() else src.parent / path
            if not value["path"] or not value["label"]:
                skipped.append(
                    {"path": str(path), "reason": "empty_row", "detail": f"{src}:{line}: empty path or label"}
                )
                continue
            if not path.is_file():
                skipped.append({"path": str(path), "reason": "missing_file", "detail": f"{src}:{line}"})
                continue
            label = safe_label(value["label"])
            group = f"{info.name}:{label}:{value['group']}" if value.get("group") else ""
            found.append(Candidate(path, label, info.name, split_name(value.get("split", "")), group, value["label"]))
    notes = {"grouping": "the CSV's group column where given; otherwise each image is its own split group"}
    return Collected("csv", src, {info.name: info}, found, skipped, notes)
