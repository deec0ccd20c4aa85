"""Labelled leaf photos: class folders or a CSV manifest, checked, split and fingerprinted.

Two sources give the same list of (path, label) samples:

* a folder of class folders in the PlantVillage naming (``Tomato___Late_blight``,
  ``Orange___Haunglongbing_(Citrus_greening)``; spaces, commas and parentheses are fine);
* a CSV file with a header and columns ``path,label`` (paths relative to the CSV's folder), which
  is what the monitor's labelling queue exports; optional columns ``domain`` (lab/field), ``source``
  and ``group`` (photos of one leaf or plant, kept on one side of the split);
* a folder written by ``cropwatch data import`` or ``data merge``: class folders plus ``index.csv``
  (the CSV form above, with those columns), which is read instead of scanning the folders.

Every image is decoded once up front with :func:`shared.image.decode_image`; those that fail are
listed with the reason and skipped. Evaluation images go through the same function at the model's
input size, so the network sees exactly what a field device would give it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from shared.errors import ImageDecodeError
from shared.fsutil import atomic_write_text
from shared.image import decode_image

if TYPE_CHECKING:
    import torch
    from torch.utils.data import Dataset

    # torch stays out of this module's import: the dataset checks run without it.
    ImageSet = Dataset[tuple[torch.Tensor, int]]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
SPLITS = ("train", "val", "test")
INDEX = "index.csv"  # what cloud_trainer.datasets writes beside the class folders


class DatasetError(ValueError):
    """A dataset that cannot be trained on; the message says what to fix."""


@dataclass(frozen=True)
class Sample:
    path: Path
    label: str
    # The path as written in the split file: relative to the dataset root, so a split stays valid
    # when the folder moves.
    rel: str
    domain: str = ""
    source: str = ""
    # Photos of one leaf or plant share a group and one split; "" = the image is its own group.
    group: str = ""


@dataclass
class LeafDataset:
    root: Path
    samples: list[Sample]
    classes: list[str]
    skipped: list[dict[str, str]] = field(default_factory=list)
    synthetic: bool = False
    source: str = "folder"

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    def counts(self) -> dict[str, int]:
        c = Counter(s.label for s in self.samples)
        return {k: c.get(k, 0) for k in self.classes}


def _scan_folder(root: Path) -> list[Sample]:
    samples = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(class_dir.rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."):
                samples.append(Sample(f, class_dir.name, f.relative_to(root).as_posix()))
    return samples


def _read_csv(csv_path: Path) -> list[Sample]:
    root = csv_path.parent
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip().lower() for f in reader.fieldnames or []]
        if "path" not in fields or "label" not in fields:
            raise DatasetError(
                f"{csv_path}: a label CSV needs a header with columns 'path' and 'label' (found {reader.fieldnames})"
            )
        samples = []
        for line_no, row in enumerate(reader, start=2):
            row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
            if not row.get("path") or not row.get("label"):
                raise DatasetError(f"{csv_path}:{line_no}: empty path or label")
            p = Path(row["path"])
            full = p if p.is_absolute() else root / p
            rel = p.as_posix()
            samples.append(
                Sample(full, row["label"], rel, row.get("domain", ""), row.get("source", ""), row.get("group", ""))
            )
    return samples


def load_dataset(source: str | Path, min_per_class: int = 3, check_size: int = 32) -> LeafDataset:
    """Read a class-folder tree or a ``path,label`` CSV; decode every image once; skip the broken.

    Raises :class:`DatasetError` for a missing source, fewer than two classes, or a class with
    fewer than ``min_per_class`` readable images (naming the class).
    """
    source = Path(source)
    if not source.exists():
        raise DatasetError(f"dataset {source} does not exist")
    if source.is_file():
        if source.suffix.lower() != ".csv":
            raise DatasetError(f"{source} is a file but not a .csv label file; give a folder of class folders or a CSV")
        samples, root, kind = _read_csv(source), source.parent, "csv"
    elif (source / INDEX).is_file():
        samples, root, kind = _read_csv(source / INDEX), source, "import"
    else:
        samples, root, kind = _scan_folder(source), source, "folder"
    synthetic = (root / "SYNTHETIC.txt").exists() or any(s.label.startswith("Synthetic_leaf___") for s in samples)

    good, skipped = [], []
    for s in samples:
        try:
            data = s.path.read_bytes()
            # A small decode still reads the whole JPEG stream (truncation shows) but is cheap.
            decode_image(data, check_size)
        except (OSError, ImageDecodeError) as exc:
            reason = getattr(exc, "reason", type(exc).__name__)
            skipped.append({"path": s.rel, "label": s.label, "reason": str(reason), "detail": str(exc)})
            continue
        good.append(s)
    if skipped:
        logger.warning("skipped %d unreadable image(s) of %d; see skipped in dataset.json", len(skipped), len(samples))
        for item in skipped[:10]:
            logger.warning("skipped %s: %s", item["path"], item["detail"])

    labels_seen = sorted({s.label for s in samples})
    counts = Counter(s.label for s in good)
    if not samples:
        raise DatasetError(
            f"no images found in {source}; expected class folders holding .jpg/.png files, or a path,label CSV"
        )
    too_few = [c for c in labels_seen if counts.get(c, 0) < min_per_class]
    if too_few:
        detail = ", ".join(f"{c!r} has {counts.get(c, 0)}" for c in too_few)
        raise DatasetError(
            f"too few readable images: {detail}; each class needs at least {min_per_class} "
            "(one each for train, validation and test); add images or remove the class"
        )
    if len(labels_seen) < 2:
        raise DatasetError(f"{source} has {len(labels_seen)} class(es); a classifier needs at least 2")
    return LeafDataset(root=root, samples=good, classes=labels_seen, skipped=skipped, synthetic=synthetic, source=kind)


def fingerprint(dataset: LeafDataset) -> str:
    """sha256 over every (relative path, label, sha256 of the file's bytes), in sorted order."""
    h = hashlib.sha256()
    for s in sorted(dataset.samples, key=lambda s: (s.rel, s.label)):
        digest = hashlib.sha256(s.path.read_bytes()).hexdigest()
        h.update(f"{s.rel}\t{s.label}\t{digest}\n".encode())
    return "sha256:" + h.hexdigest()


def stratified_split(
    dataset: LeafDataset, val_frac: float = 0.2, test_frac: float = 0.2, seed: int = 0
) -> dict[str, list[Sample]]:
    """Per class: shuffle (by seed, from sorted order) and cut; every split gets each class at least once.

    When samples carry groups (photos of one leaf), whole groups are shuffled and dealt instead.
    """
    if not (0 < val_frac < 1 and 0 < test_frac < 1 and val_frac + test_frac < 1):
        raise DatasetError(f"val fraction {val_frac} and test fraction {test_frac} must be in (0, 1) and sum below 1")
    if any(s.group for s in dataset.samples):
        return _grouped_split(dataset, val_frac, test_frac, seed)
    out: dict[str, list[Sample]] = {k: [] for k in SPLITS}
    for c in dataset.classes:
        items = sorted((s for s in dataset.samples if s.label == c), key=lambda s: s.rel)
        random.Random(f"{seed}:{c}").shuffle(items)
        n = len(items)
        n_test = max(1, round(n * test_frac))
        n_val = max(1, round(n * val_frac))
        if n - n_test - n_val < 1:
            raise DatasetError(f"class {c!r} has {n} images, too few to split into train, validation and test")
        out["test"] += items[:n_test]
        out["val"] += items[n_test : n_test + n_val]
        out["train"] += items[n_test + n_val :]
    return out


def _grouped_split(dataset: LeafDataset, val_frac: float, test_frac: float, seed: int) -> dict[str, list[Sample]]:
    """Per class: shuffle the leaf groups and deal whole groups to test, then val, until each has its share."""
    out: dict[str, list[Sample]] = {k: [] for k in SPLITS}
    for c in dataset.classes:
        groups: dict[str, list[Sample]] = {}
        for s in sorted((s for s in dataset.samples if s.label == c), key=lambda s: s.rel):
            groups.setdefault(s.group or "\0" + s.rel, []).append(s)
        keys = sorted(groups)
        random.Random(f"{seed}:{c}").shuffle(keys)
        n = sum(len(g) for g in groups.values())
        want = {"test": max(1, round(n * test_frac)), "val": max(1, round(n * val_frac))}
        got = {k: 0 for k in SPLITS}
        for key in keys:
            split = next((k for k in ("test", "val") if got[k] < want[k]), "train")
            out[split] += groups[key]
            got[split] += len(groups[key])
        if not all(got.values()):
            raise DatasetError(
                f"class {c!r} has {n} images in {len(keys)} leaf groups, too few to put whole groups into train, "
                "validation and test; add photos of more leaves"
            )
    return out


def save_split(path: Path, split: dict[str, list[Sample]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["split", "label", "path"])
    for name in SPLITS:
        for s in split[name]:
            writer.writerow([name, s.label, s.rel])
    atomic_write_text(path, buf.getvalue())


def load_split(path: Path, dataset: LeafDataset) -> dict[str, list[Sample]]:
    """Re-read a saved split (for resume and export) against the dataset's current samples."""
    by_rel = {s.rel: s for s in dataset.samples}
    out: dict[str, list[Sample]] = {k: [] for k in SPLITS}
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            s = by_rel.get(row["path"])
            if s is None:
                raise DatasetError(f"{path}: {row['path']} is no longer in the dataset; the data changed since the run")
            out[row["split"]].append(s)
    return out


def dataset_summary(dataset: LeafDataset, fp: str) -> dict:
    return {
        "root": str(dataset.root),
        "source": dataset.source,
        "synthetic": dataset.synthetic,
        "fingerprint": fp,
        "classes": dataset.classes,
        "counts": dataset.counts(),
        "images": len(dataset.samples),
        "domains": dict(sorted(Counter(s.domain for s in dataset.samples if s.domain).items())),
        "sources": dict(sorted(Counter(s.source for s in dataset.samples if s.source).items())),
        "skipped_count": len(dataset.skipped),
        "skipped": dataset.skipped,
    }


def write_json(path: Path, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


# --- torch side ------------------------------------------------------------------------------


def eval_array(sample: Sample, size: int) -> np.ndarray:
    """The uint8 HxWx3 image exactly as an edge device would feed it to the model."""
    return decode_image(sample.path.read_bytes(), size, "center_crop")


class ImageOps(Protocol):
    """Extra training image operations (field_aug.FieldAugment): on the decoded photo, then the tensor."""

    def before(self, arr: np.ndarray, domain: str) -> np.ndarray: ...

    def after(self, img: torch.Tensor) -> torch.Tensor: ...


def make_torch_dataset(
    samples: list[Sample],
    class_to_idx: dict[str, int],
    size: int,
    train: bool,
    cache: bool = True,
    field: ImageOps | None = None,
) -> ImageSet:
    import torch
    from torch.utils.data import Dataset
    from torchvision.transforms import v2

    # Field photos: any orientation (a leaf seen from above has no "up"), uneven light, some
    # defocus, the leaf off-centre, filling the frame or small in it. Hue shifts stay small
    # because colour is part of the diagnosis (yellowing, rust).
    surround = 96  # a neutral grey-brown for pixels the zoom-out and rotation reveal
    train_tf = v2.Compose(
        [
            v2.RandomApply([v2.RandomZoomOut(fill=surround, side_range=(1.0, 1.6))], p=0.25),
            v2.RandomResizedCrop(size, scale=(0.35, 1.0), ratio=(0.75, 1.333), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomApply([v2.RandomRotation((90, 90))], p=0.5),
            v2.RandomApply([v2.RandomRotation(30, fill=surround)], p=0.5),
            v2.ColorJitter(brightness=0.35, contrast=0.3, saturation=0.3, hue=0.02),
            v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.5))], p=0.25),
        ]
    )

    class _Images(Dataset[tuple[torch.Tensor, int]]):
        def __init__(self) -> None:
            self.cache: dict[int, np.ndarray] = {}

        def __len__(self) -> int:
            return len(samples)

        def _array(self, i: int) -> np.ndarray:
            if i in self.cache:
                return self.cache[i]
            s = samples[i]
            # Training crops from a slightly larger decode so RandomResizedCrop has margin to move in.
            arr = decode_image(s.path.read_bytes(), round(size * 1.15)) if train else eval_array(s, size)
            if cache:
                self.cache[i] = arr
            return arr

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            arr = self._array(i)
            if train and field is not None:
                arr = field.before(arr, samples[i].domain)
            img = torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1)
            if train:
                img = train_tf(img)
                if field is not None:
                    img = field.after(img)
            return img, class_to_idx[samples[i].label]

    return _Images()
