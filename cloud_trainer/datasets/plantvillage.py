"""PlantVillage (Hughes and Salathe 2015): the original repository and its common repackagings.

Accepted under SRC, at any depth: ``raw/color/<Crop___Condition>/`` (spMohanty/PlantVillage-Dataset),
per-crop repositories (one folder per class of one crop), Kaggle's train/valid(/test) folders, and
copies whose class folders were renamed (``Tomato_Bacterial_spot``, ``Pepper__bell___healthy``):
folder names are matched to the 38 PlantVillage classes ignoring case and punctuation. The
``grayscale`` and ``segmented`` variants are left out unless ``--variant`` names one.

Split groups: PlantVillage photographed each leaf several times in a row (about four shots; the
repository's ``leaf-map.json`` lists the leaf of every photo). File names keep the camera's photo
number: ``<uuid>___<series> <number>[ augmentation].JPG``, e.g. ``...___RS_HL 2002.JPG`` or
``...___FREC_C.Rust 3656_flipLR.JPG`` in the augmented Kaggle copy. Without the map, photos of one
class whose numbers fall in the same run of ``leaf_window`` consecutive numbers of one series form a
group, so the shots of one leaf stay on one side of the split except where a run boundary cuts a
leaf; with ``--leaf-map`` the groups are the leaves themselves. Augmented copies of one photo always
share its group.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .core import Collected, DatasetImportError, SourceInfo
from .layout import scan_class_folders

SOURCE = SourceInfo(
    name="plantvillage",
    domain="lab",
    licence="CC BY-SA 3.0 (images)",
    attribution="PlantVillage, Hughes and Salathe 2015, arXiv:1511.08060; Mohanty et al. 2016",
    url="https://github.com/spMohanty/PlantVillage-Dataset",
)

CLASSES = (
    "Apple___Apple_scab", "Apple___Black_rot", "Apple___Cedar_apple_rust", "Apple___healthy",
    "Blueberry___healthy", "Cherry_(including_sour)___Powdery_mildew", "Cherry_(including_sour)___healthy",
    "Corn_(maize)___Cercospora_leaf_spot Gray_leaf_spot", "Corn_(maize)___Common_rust_",
    "Corn_(maize)___Northern_Leaf_Blight", "Corn_(maize)___healthy", "Grape___Black_rot",
    "Grape___Esca_(Black_Measles)", "Grape___Leaf_blight_(Isariopsis_Leaf_Spot)", "Grape___healthy",
    "Orange___Haunglongbing_(Citrus_greening)", "Peach___Bacterial_spot", "Peach___healthy",
    "Pepper,_bell___Bacterial_spot", "Pepper,_bell___healthy", "Potato___Early_blight", "Potato___Late_blight",
    "Potato___healthy", "Raspberry___healthy", "Soybean___healthy", "Squash___Powdery_mildew",
    "Strawberry___Leaf_scorch", "Strawberry___healthy", "Tomato___Bacterial_spot", "Tomato___Early_blight",
    "Tomato___Late_blight", "Tomato___Leaf_Mold", "Tomato___Septoria_leaf_spot",
    "Tomato___Spider_mites Two-spotted_spider_mite", "Tomato___Target_Spot",
    "Tomato___Tomato_Yellow_Leaf_Curl_Virus", "Tomato___Tomato_mosaic_virus", "Tomato___healthy",
)  # fmt: skip
VARIANTS = ("color", "grayscale", "segmented")

# "<uuid>___" (optional in renamed copies), the series code (may hold spaces: "UF.GRC_BS_Lab Leaf"),
# the photo number, then anything an augmentation or a copy appended ("_flipLR", " 1", " copy").
PHOTO = re.compile(
    r"^(?:[0-9a-fA-F]{8}-[0-9a-fA-F-]{27}___)?(?P<series>.+?) (?P<number>\d{3,5})(?P<rest>(?:[ _(].*)?)$"
)


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_BY_KEY = {_key(c): c for c in CLASSES}


def class_id(folder: str) -> str:
    """The PlantVillage class a folder name means; an unknown ``Crop___Condition`` name is kept as is."""
    return _BY_KEY.get(_key(folder), folder.strip())


def photo_id(file: Path) -> tuple[str, int] | None:
    """(series, photo number) from a PlantVillage file name, or None for a renamed file."""
    m = PHOTO.match(file.stem)
    if m is None:
        return None
    return m["series"].strip().lower(), int(m["number"])


def load_leaf_map(path: Path) -> dict[str, list[str]]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetImportError(
            f"--leaf-map {path}: cannot read it as JSON ({exc}); give PlantVillage's leaf-map.json"
        ) from exc
    if not isinstance(raw, dict):
        raise DatasetImportError(f"--leaf-map {path}: expected an object of 'series number' -> ['Class:::leaf', ...]")
    return {str(k).lower(): [str(v) for v in vs] for k, vs in raw.items()}


def collect(src: Path, variant: str = "color", leaf_window: int = 10, leaf_map: Path | None = None) -> Collected:
    if variant not in VARIANTS:
        raise DatasetImportError(f"--variant {variant!r}: choose one of {', '.join(VARIANTS)}")
    if leaf_window < 1:
        raise DatasetImportError(f"--leaf-window {leaf_window}: must be at least 1")
    leaves = load_leaf_map(leaf_map) if leaf_map else {}
    mapped = {"leaf_map": 0, "window": 0, "none": 0}

    def group_of(file: Path, label: str) -> str:
        pid = photo_id(file)
        if pid is None:
            mapped["none"] += 1
            return ""
        series, number = pid
        for entry in leaves.get(f"{series} {number:04d}", []) + leaves.get(f"{series} {number}", []):
            cls, _, leaf = entry.partition(":::")
            if _key(cls) == _key(label) and leaf:
                mapped["leaf_map"] += 1
                return f"{SOURCE.name}:{label}:{series}:leaf {leaf}"
        mapped["window"] += 1
        return f"{SOURCE.name}:{label}:{series}:{number // leaf_window * leaf_window}"

    def skip(parts: tuple[str, ...]) -> bool:
        return any(p.lower() in VARIANTS and p.lower() != variant for p in parts)

    scan = scan_class_folders(src, SOURCE.name, lambda name: class_id(name), group_of, skip)
    unknown = sorted({label for label in scan.folders.values() if label not in CLASSES})
    notes = {
        "class_mapping": {f: c for f, c in sorted(scan.folders.items()) if f != c},
        "unmapped_classes": unknown,
        "unlabelled_files_not_imported": scan.unlabelled_files,
        "grouping": (
            f"leaf groups from file names: {mapped['leaf_map']} photos by --leaf-map, {mapped['window']} by runs of "
            f"{leaf_window} photo numbers per series, {mapped['none']} renamed files each on their own"
        ),
    }
    return Collected("plantvillage", src, {SOURCE.name: SOURCE}, scan.candidates, notes=notes)
