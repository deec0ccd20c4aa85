"""iBean (AI-Lab-Makerere/ibean): bean leaves in Ugandan fields, ``train/ validation/ test/``.

Class folders ``angular_leaf_spot``, ``bean_rust``, ``healthy`` as in the original zips, or with a
``bean_`` prefix on every class as in the team's ``leaf_field_dev`` copy; both become
``Bean___Angular_leaf_spot``, ``Bean___Rust``, ``Bean___healthy``. iBean's split is by image, not by
field, and names no plant: every image is its own split group (near-duplicates joined).
"""

from __future__ import annotations

from pathlib import Path

from .core import Collected, SourceInfo
from .layout import scan_class_folders

SOURCE = SourceInfo(
    name="ibean",
    domain="field",
    licence="MIT (original, Copyright (c) 2020 AIR Lab Makerere University); CC BY 4.0 (per-class repackaging)",
    attribution="iBean, Makerere AI Lab with NaCRRI, 2020",
    url="https://github.com/AI-Lab-Makerere/ibean/",
)

CLASSES = {
    "angular_leaf_spot": "Bean___Angular_leaf_spot",
    "rust": "Bean___Rust",
    "healthy": "Bean___healthy",
}


def class_id(folder: str) -> str:
    name = folder.strip().lower().replace(" ", "_").replace("-", "_")
    for prefix in ("bean___", "bean_"):
        if name.startswith(prefix) and name[len(prefix) :] in CLASSES:
            name = name[len(prefix) :]
    return CLASSES.get(name, f"Bean___{folder.strip()}")


def collect(src: Path) -> Collected:
    scan = scan_class_folders(src, SOURCE.name, class_id)
    notes = {
        "class_mapping": dict(sorted(scan.folders.items())),
        "unmapped_classes": sorted({c for c in scan.folders.values() if c not in CLASSES.values()}),
        "unlabelled_files_not_imported": scan.unlabelled_files,
        "grouping": "iBean names no plant: each image is its own split group (near-duplicates joined)",
    }
    return Collected("ibean", src, {SOURCE.name: SOURCE}, scan.candidates, notes=notes)
