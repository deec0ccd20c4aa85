"""PlantDoc (pratikkayal/PlantDoc-Dataset): ``train/`` and ``test/`` of class folders, field photos.

Class names are mapped to PlantVillage ids by the shipped table ``plantdoc_classes.toml`` (or
``--mapping FILE`` of the same form), so PlantDoc and PlantVillage merge into one class set. Classes
the table does not name keep their PlantDoc name and are listed in the card. PlantDoc is collected
from the web and names no plant, so every image is its own split group (near-duplicates joined).
"""

from __future__ import annotations

import re
import tomllib
from importlib import resources
from pathlib import Path

from .core import Collected, DatasetImportError, SourceInfo
from .layout import scan_class_folders

SOURCE = SourceInfo(
    name="plantdoc",
    domain="field",
    licence="CC BY 4.0",
    attribution="PlantDoc, Singh et al. 2020 (CoDS-COMAD), IIT Gandhinagar",
    url="https://github.com/pratikkayal/PlantDoc-Dataset",
)


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def load_mapping(path: Path | None = None) -> dict[str, str]:
    """PlantDoc name key -> PlantVillage class id, from ``path`` or the shipped table."""
    try:
        text = (
            path.read_text(encoding="utf-8")
            if path
            else (resources.files(__package__).joinpath("plantdoc_classes.toml").read_text(encoding="utf-8"))
        )
        table = tomllib.loads(text).get("classes", {})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DatasetImportError(
            f'class mapping {path}: {exc}; expected a [classes] table of "name" = "class id"'
        ) from exc
    return {_key(k): str(v) for k, v in table.items()}


def collect(src: Path, mapping_file: Path | None = None) -> Collected:
    mapping = load_mapping(mapping_file)
    unmapped: set[str] = set()

    def label_of(folder: str) -> str:
        label = mapping.get(_key(folder))
        if label is None:
            unmapped.add(folder.strip())
            return folder.strip()
        return label

    scan = scan_class_folders(src, SOURCE.name, label_of)
    notes = {
        "class_mapping": {f: c for f, c in sorted(scan.folders.items()) if f not in unmapped},
        "unmapped_classes": sorted(unmapped),
        "unlabelled_files_not_imported": scan.unlabelled_files,
        "grouping": "PlantDoc names no plant: each image is its own split group (near-duplicates joined)",
    }
    return Collected("plantdoc", src, {SOURCE.name: SOURCE}, scan.candidates, notes=notes)
