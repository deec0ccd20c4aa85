"""Retraining data: the base run's data merged with the monitor's field labels.

Every image is copied once under its sha256 (``data/images/ab/abcd....jpg``): a field photo whose
bytes are already in the base data is a duplicate and dropped, so the base run's fixed test set
cannot leak into training. Part of the new field labels is held out per class (``field_test.csv``,
deterministic: ordered by a seeded hash of the image) and the rest goes into train/val
(``split.csv``); the base run's train/val/test assignment is kept as it was.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import io
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.fsutil import atomic_write_text

logger = logging.getLogger(__name__)


class RetrainError(RuntimeError):
    """Retraining cannot go on; the message says what is missing and what to do."""


@dataclass
class FieldItem:
    msg_id: str
    label: str
    labelled_by: str
    labelled_at: str
    sha256: str
    path: Path
    role: str = "train"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _store(images: Path, src: Path, digest: str) -> str:
    """Copy (hard-link when possible) ``src`` to its content address; the path relative to ``data/``."""
    rel = f"images/{digest[:2]}/{digest}{src.suffix.lower() or '.jpg'}"
    dst = images.parent / rel
    # A rerun after a crash finds the files of the first try: reuse one only when its bytes are right.
    if dst.exists() and sha256_bytes(dst.read_bytes()) == digest:
        return rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)  # the content address never names a half-written file
    return rel


def field_split(items: list[FieldItem], test_frac: float, val_frac: float, seed: int) -> None:
    """Assign roles per class: field_test, val, train. Deterministic: order by a seeded hash of the image."""
    if not (0 < test_frac < 1 and 0 <= val_frac < 1):
        raise RetrainError(f"--field-test-frac {test_frac} must be in (0, 1) and --field-val-frac {val_frac} in [0, 1)")
    by_class: dict[str, list[FieldItem]] = {}
    for it in items:
        by_class.setdefault(it.label, []).append(it)
    for label, group in by_class.items():
        group.sort(key=lambda it: hashlib.sha256(f"{seed}:{it.sha256}".encode()).hexdigest())
        n = len(group)
        n_test = max(1, round(n * test_frac)) if n >= 2 else 0
        rest = n - n_test
        n_val = round(rest * val_frac) if rest >= 3 else 0
        for i, it in enumerate(group):
            it.role = "field_test" if i < n_test else ("val" if i < n_test + n_val else "train")
        logger.info("field labels %s: %d test, %d val, %d train", label, n_test, n_val, rest - n_val)


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


@dataclass
class Merged:
    classes: list[str]
    field: list[FieldItem]
    counts: dict[str, Any]
    labels_until: dt.datetime | None


def merge(base: Path, export_dir: Path, run: Path, args: argparse.Namespace) -> Merged:
    """Write run/data/{dataset.csv,field_test.csv,images/} and run/split.csv from the base run and the export."""
    info = json.loads((base / "run.json").read_text())
    classes = list(info["classes"])
    data_dir = run / "data"
    images = data_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    seen: dict[str, str] = {}  # sha256 -> where it came from
    rows = _Rows()
    counts = _merge_base(base, info, images, seen, rows, args.quiet)
    labels = read_csv(export_dir / "labels.csv")
    items, newest, field_counts = _read_field(export_dir, labels, classes, seen)
    # Content order, not arrival order: the same labels give the same run whichever device sent first.
    usable = sorted((it for it in items if it.role not in ("duplicate", "unknown_class")), key=lambda it: it.sha256)
    field_split(usable, args.field_test_frac, args.field_val_frac, args.seed)
    n_test = sum(it.role == "field_test" for it in usable)
    if n_test == 0:
        raise RetrainError(
            f"{len(usable)} new field label(s) after removing {field_counts['field_duplicates']} duplicate(s) and "
            f"{field_counts['field_unknown_class']} of unknown classes: too few to hold out a field test set (a class "
            "needs 2 labelled samples); label more samples on the monitor's Detections page"
        )
    for it in usable:
        rel = _store(images, it.path, it.sha256)
        if it.role == "field_test":
            rows.test.append([rel, it.label, it.msg_id])
            continue
        rows.dataset.append([rel, it.label, "field", it.msg_id])
        repeats = max(1, args.field_oversample) if it.role == "train" else 1
        rows.split.extend([[it.role, it.label, rel]] * repeats)
    _write_csv(data_dir / "dataset.csv", ["path", "label", "origin", "msg_id"], rows.dataset)
    _write_csv(data_dir / "field_test.csv", ["path", "label", "msg_id"], rows.test)
    _write_csv(run / "split.csv", ["split", "label", "path"], rows.split)
    atomic_write_text(
        data_dir / "SOURCE.txt",
        f"Base run {base} ({info['dataset_fingerprint']}) merged with {len(labels)} field labels from the monitor; "
        "images stored by sha256.\n",
    )
    counts = {
        "base_images": sum(1 for r in rows.dataset if r[2] == "base"),
        "base_duplicates": counts["base_duplicates"],
        "field_labels": len(labels),
        **field_counts,
        "field_train": sum(it.role == "train" for it in usable),
        "field_val": sum(it.role == "val" for it in usable),
        "field_test": n_test,
        "field_oversample": max(1, args.field_oversample),
    }
    return Merged(classes, items, counts, newest)


@dataclass
class _Rows:
    """The CSV rows a merge writes: dataset.csv, split.csv and field_test.csv."""

    dataset: list[list[Any]] = field(default_factory=list)
    split: list[list[Any]] = field(default_factory=list)
    test: list[list[Any]] = field(default_factory=list)


def _merge_base(
    base: Path, info: dict[str, Any], images: Path, seen: dict[str, str], rows: _Rows, quiet: bool
) -> dict[str, int]:
    """The base run's images under their content address, with its train/val/test assignment as it was."""
    from tqdm import tqdm

    from .disease import dataset as ds

    data_path = _base_data_path(base, info)
    base_data = ds.load_dataset(data_path, min_per_class=1)
    base_split = ds.load_split(base / "split.csv", base_data)
    # A retrained base carries field rows with the labels they had then; they come fresh from the
    # export instead (latest label), else a correction would be dropped as a duplicate of its old self.
    inherited_field = _field_rows(data_path)
    dup_base = dropped_field = 0
    total = sum(len(v) for v in base_split.values())
    bar = tqdm(total=total, desc="merge base data", unit="img", disable=quiet, leave=False)
    for name in ds.SPLITS:
        for s in base_split[name]:
            bar.update()
            if s.rel in inherited_field:
                dropped_field += 1
                continue
            digest = sha256_bytes(s.path.read_bytes())
            if digest in seen:
                dup_base += 1
                continue
            seen[digest] = f"base:{name}"
            rel = _store(images, s.path, digest)
            rows.dataset.append([rel, s.label, "base", ""])
            rows.split.append([name, s.label, rel])
    bar.close()
    if dropped_field:
        logger.info("%d field row(s) of the base run left out: field labels come from the export", dropped_field)
    return {"base_duplicates": dup_base}


def _read_field(
    export_dir: Path, labels: list[dict[str, str]], classes: list[str], seen: dict[str, str]
) -> tuple[list[FieldItem], dt.datetime | None, dict[str, int]]:
    """The exported labels as items (duplicates of images already seen and unknown classes marked so),
    the newest label time, and how many were duplicates or of unknown classes."""
    items: list[FieldItem] = []
    dup_field = unknown = 0
    newest: dt.datetime | None = None
    for r in labels:
        path = export_dir / r["path"]
        digest = sha256_bytes(path.read_bytes())
        item = FieldItem(r["msg_id"], r["label"], r["labelled_by"], r["labelled_at"], digest, path)
        at = parse_time(r["labelled_at"])
        newest = at if newest is None or at > newest else newest
        if digest in seen:
            item.role = "duplicate"
            dup_field += 1
        elif r["label"] not in classes:
            # Fine-tuning keeps the classifier head; a new class needs a new base training.
            item.role = "unknown_class"
            unknown += 1
        else:
            seen[digest] = "field"
        items.append(item)
    if unknown:
        names = sorted({it.label for it in items if it.role == "unknown_class"})
        logger.warning(
            "%d field label(s) name classes the base model does not have (%s); skipped (train a new base for them)",
            unknown,
            ", ".join(names),
        )
    return items, newest, {"field_duplicates": dup_field, "field_unknown_class": unknown}


def _base_data_path(base: Path, info: dict[str, Any]) -> Path:
    """The base run's data; a relative path is relative to where that run was trained (``cwd`` in run.json)."""
    data = Path(info["data"])
    if data.is_absolute():
        return data
    if info.get("cwd"):
        return Path(info["cwd"]) / data
    if not data.exists():
        raise RetrainError(
            f"the base run {base} was trained on the relative data path {data}, which is relative to the folder "
            "the base run was trained in and does not exist here; run from that folder, or retrain the base with "
            "an absolute --data path"
        )
    return data.resolve()


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _field_rows(data: Path) -> set[str]:
    """Paths of a retrained run's ``dataset.csv`` rows that did not come from the original base data."""
    if data.suffix.lower() != ".csv" or not data.is_file():
        return set()
    rows = read_csv(data)
    return {r["path"] for r in rows if "origin" in r and r["origin"] != "base"}


def parse_time(value: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(value.strip())
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)
