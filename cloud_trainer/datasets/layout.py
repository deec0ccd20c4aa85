"""Class folders found anywhere under SRC: the shape most downloads share (ImageFolder style).

A class folder is a folder that holds files directly; its split is the nearest enclosing folder
named like a split (``train``, ``val``/``valid``/``validation``, ``test``). Files lying directly in a
split folder or in SRC itself carry no label (Kaggle's unlabelled ``test/test``) and are not
imported; the card counts them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .core import Candidate, is_listed, split_name

# name of the class folder -> class id, or None to leave the folder out
LabelFn = Callable[[str], str | None]
# (file, class id) -> split group ("" = its own group)
GroupFn = Callable[[Path, str], str]


@dataclass
class Scan:
    candidates: list[Candidate] = field(default_factory=list)
    unlabelled_files: int = 0
    folders: dict[str, str] = field(default_factory=dict)  # folder name -> class id
    left_out: list[str] = field(default_factory=list)  # folders the format does not take


def scan_class_folders(
    src: Path,
    source: str,
    label_of: LabelFn,
    group_of: GroupFn | None = None,
    skip: Callable[[tuple[str, ...]], bool] | None = None,
) -> Scan:
    scan = Scan()
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        folder = Path(dirpath)
        parts = folder.relative_to(src).parts
        if skip is not None and skip(parts):
            dirnames[:] = []
            continue
        if not any(is_listed(f) for f in filenames):
            continue
        if not parts or split_name(folder.name):
            scan.unlabelled_files += len(list_files_here(folder, filenames))
            continue
        label = label_of(folder.name)
        if label is None:
            scan.left_out.append(str(folder.relative_to(src)))
            continue
        scan.folders[folder.name] = label
        split = next((split_name(p) for p in reversed(parts[:-1]) if split_name(p)), "")
        for f in list_files_here(folder, filenames):
            group = group_of(f, label) if group_of else ""
            scan.candidates.append(Candidate(f, label, source, split, group, folder.name))
    return scan


def list_files_here(folder: Path, filenames: list[str]) -> list[Path]:
    """The files of ``folder`` itself (not below it) that an import looks at."""
    return [folder / n for n in sorted(filenames) if is_listed(n) and (folder / n).is_file()]
