"""The common import: decode once, drop exact duplicates, find near-duplicates, group, write.

A format module lists :class:`Candidate` images (path, class id, the source's split, the leaf or plant
group when the source names one) in a :class:`Collected`; :func:`import_images` does the rest and
writes the dataset the trainer reads::

    DIR/<class id>/<file>   the original bytes of every kept image (never re-encoded)
    DIR/index.csv           path,label,domain,source,group,source_split,original_label,sha256,phash
    DIR/card.json, card.md  the dataset card (see :mod:`.card`)
    DIR/duplicates.csv      every exact duplicate removed and every near-duplicate pair found

Images are processed in sorted path order (a merge: in the order of its inputs), so the copy of a
duplicate that is kept is the same on every run. Identical bytes under two different labels are a
labelling conflict: every copy is dropped and counted, because no one can say which label is right.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.errors import ImageDecodeError
from shared.fsutil import atomic_write_text
from shared.image import decode_image

from .card import SourceInfo, write_card
from .dedupe import UnionFind, near_pairs, perceptual_hash

logger = logging.getLogger(__name__)

DOMAINS = ("lab", "field")
INDEX = "index.csv"
INDEX_COLUMNS = ["path", "label", "domain", "source", "group", "source_split", "original_label", "sha256", "phash"]
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
# Sidecar files a class folder may hold that are not meant as photos: not counted as skipped images.
IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini", "readme.md", "readme.txt", "license", "license.txt"})
HASH_SIZE = 64  # decode side for the perceptual hash; the full check of the stream happens at any size


class DatasetImportError(ValueError):
    """An import that cannot run; the message says what to fix."""


@dataclass(frozen=True)
class Candidate:
    path: Path
    label: str
    source: str
    source_split: str = ""
    # Photos of one leaf or plant share a group; "" = the image is its own group.
    group: str = ""
    original_label: str = ""


@dataclass
class Collected:
    """What a format module found under SRC."""

    fmt: str
    src: Path
    sources: dict[str, SourceInfo]
    candidates: list[Candidate] = field(default_factory=list)
    # Files the format module itself rejected (a CSV row naming a missing file, ...): path, reason.
    skipped: list[dict[str, str]] = field(default_factory=list)
    # Format-specific facts for the card: the class mapping used, unmapped classes, ...
    notes: dict[str, Any] = field(default_factory=dict)
    # True: candidates are already in priority order (merge: the first input's copy of a duplicate wins).
    ordered: bool = False


@dataclass
class _Kept:
    cand: Candidate
    sha: str
    phash: int
    rel: str


def split_name(name: str) -> str:
    """``train``/``val``/``test`` for a folder named like a split, else ""."""
    return SPLIT_NAMES.get(name.strip().lower(), "")


def is_listed(name: str) -> bool:
    """A file name an import looks at: not hidden, not a known sidecar."""
    return not name.startswith(".") and name.lower() not in IGNORED_NAMES


def list_files(folder: Path) -> list[Path]:
    """Every regular, non-hidden file under ``folder`` (recursively), sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [Path(dirpath) / name for name in sorted(filenames) if is_listed(name)]
    return out


def safe_label(label: str) -> str:
    """A class id usable as a folder name: separators replaced, surrounding space trimmed."""
    cleaned = label.strip().replace("/", "-").replace("\\", "-")
    if cleaned in ("", ".", ".."):
        raise DatasetImportError(f"class name {label!r} cannot be a folder name; rename it in the source")
    return cleaned


def check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetImportError(f"--out {out} exists and is not an empty folder; choose a new folder")


def _unique_name(name: str, sha: str, taken: set[str]) -> str:
    if name.lower() not in taken:
        return name
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}-{sha[:10]}.{suffix}" if dot else f"{name}-{sha[:10]}"


def _decode(cand: Candidate) -> tuple[bytes, int]:
    data = cand.path.read_bytes()
    pixels = decode_image(data, HASH_SIZE, "stretch")
    return data, perceptual_hash(pixels)


def import_images(col: Collected, out: Path, near_threshold: int = 4, link: bool = False) -> dict[str, Any]:
    """Decode, deduplicate, group and write ``col`` into ``out``; returns the card (also written)."""
    if not col.candidates and not col.skipped:
        raise DatasetImportError(f"no images found in {col.src} for format {col.fmt!r}; check the folder layout")
    check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    skipped = list(col.skipped)
    kept: list[_Kept] = []
    by_sha: dict[str, int] = {}
    conflicts: set[str] = set()
    exact: list[dict[str, str]] = []
    taken: dict[str, set[str]] = {}
    order = col.candidates if col.ordered else sorted(col.candidates, key=lambda c: (str(c.path), c.label))
    for n, cand in enumerate(order, start=1):
        if n % 2000 == 0:
            logger.info("checked %d of %d images", n, len(col.candidates))
        try:
            data, ph = _decode(cand)
        except ImageDecodeError as exc:
            skipped.append({"path": str(cand.path), "reason": exc.reason, "detail": str(exc)})
            continue
        except OSError as exc:
            skipped.append({"path": str(cand.path), "reason": "unreadable", "detail": str(exc)})
            continue
        sha = hashlib.sha256(data).hexdigest()
        first = by_sha.get(sha)
        if first is not None:
            if kept[first].cand.label != cand.label:
                conflicts.add(sha)
            exact.append({"kind": "exact", "kept": kept[first].rel, "other": str(cand.path), "distance": "0"})
            continue
        folder = out / cand.label
        names = taken.setdefault(cand.label, set())
        name = _unique_name(cand.path.name, sha, names)
        names.add(name.lower())
        folder.mkdir(exist_ok=True)
        if link:
            os.link(cand.path, folder / name)
        else:
            (folder / name).write_bytes(data)
        by_sha[sha] = len(kept)
        kept.append(_Kept(cand, sha, ph, f"{cand.label}/{name}"))

    dropped = [k for k in kept if k.sha in conflicts]
    dropped_rels = {k.rel for k in dropped}
    for k in dropped:
        (out / k.rel).unlink()
    kept = [k for k in kept if k.sha not in conflicts]
    conflict_images = len(dropped) + sum(e["kept"] in dropped_rels for e in exact)
    exact = [e for e in exact if e["kept"] not in dropped_rels]
    groups, near = _group(kept, near_threshold)
    _write_index(out, kept, groups, col.sources)
    _write_duplicates(out, exact, near, kept)
    stats = {
        "scanned": len(col.candidates) + len(col.skipped),
        "skipped": skipped,
        "exact_duplicates_removed": len(exact),
        "label_conflicts_removed": conflict_images,
        "label_conflicts": [{"path": k.rel, "label": k.cand.label} for k in dropped],
        "near_threshold": near_threshold,
        "near_pairs": [(kept[i].rel, kept[j].rel, d) for i, j, d in near],
    }
    rows = [{"label": k.cand.label, "source": k.cand.source, "group": g} for k, g in zip(kept, groups, strict=True)]
    return write_card(out, col.fmt, str(col.src), col.sources, rows, stats, col.notes)


def _group(kept: list[_Kept], threshold: int) -> tuple[list[str], list[tuple[int, int, int]]]:
    """Each kept image's split group: its source group, joined with its near-duplicates of the same class."""
    near = near_pairs([k.phash for k in kept], threshold)
    uf = UnionFind(len(kept))
    base = [k.cand.group or f"{k.cand.source}:{k.sha[:16]}" for k in kept]
    first_of: dict[tuple[str, str], int] = {}
    for i, k in enumerate(kept):
        j = first_of.setdefault((k.cand.label, base[i]), i)
        uf.union(i, j)
    for i, j, _d in near:
        # A near-duplicate of another class is a labelling question, reported; it cannot share a
        # per-class split group.
        if kept[i].cand.label == kept[j].cand.label:
            uf.union(i, j)
    return [base[uf.find(i)] for i in range(len(kept))], near


def _write_index(out: Path, kept: list[_Kept], groups: list[str], sources: dict[str, SourceInfo]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(INDEX_COLUMNS)
    for k, g in sorted(zip(kept, groups, strict=True), key=lambda kg: kg[0].rel):
        c = k.cand
        domain = sources[c.source].domain
        w.writerow(
            [k.rel, c.label, domain, c.source, g, c.source_split, c.original_label or c.label, k.sha, f"{k.phash:016x}"]
        )
    atomic_write_text(out / INDEX, buf.getvalue())


def _write_duplicates(
    out: Path, exact: list[dict[str, str]], near: list[tuple[int, int, int]], kept: list[_Kept]
) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["kind", "kept", "other", "distance"])
    for e in exact:
        w.writerow([e["kind"], e["kept"], e["other"], e["distance"]])
    for i, j, d in near:
        w.writerow(["near", kept[i].rel, kept[j].rel, d])
    atomic_write_text(out / "duplicates.csv", buf.getvalue())
