"""``cropwatch data import FORMAT SRC --out DIR`` and ``cropwatch data merge DIR... --out DIR``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from . import cassava, generic, ibean, merge, plantdoc, plantvillage
from .core import Collected, DatasetImportError, import_images

logger = logging.getLogger(__name__)

FORMATS = {
    "plantvillage": "PlantVillage: raw/color/<Crop___Condition>/, per-crop repos, Kaggle train/valid copies (lab)",
    "plantdoc": "PlantDoc: train/ and test/ class folders, mapped to PlantVillage classes (field)",
    "ibean": "iBean beans: train/validation/test with angular_leaf_spot, bean_rust, healthy (field)",
    "cassava": "Kaggle Cassava Leaf Disease: train.csv + train_images/ + label_num_to_disease_map.json (field)",
    "csv": "your photos: a CSV with path,label (optional group, split); needs --domain",
    "folders": "your photos: one folder per class; needs --domain",
}


def _import_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Import a downloaded leaf dataset: check and deduplicate every image, group photos of one "
        "leaf, write class folders + index.csv + a dataset card that 'cropwatch train disease --data DIR' reads.",
        epilog="formats:\n" + "\n".join(f"  {k:<13} {v}" for k, v in FORMATS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("format", choices=sorted(FORMATS), metavar="FORMAT")
    p.add_argument("src", type=Path, metavar="SRC", help="the downloaded folder (csv: the CSV file)")
    p.add_argument("--out", required=True, type=Path, help="output folder (new or empty)")
    p.add_argument(
        "--near-threshold", type=int, default=4, help="near-duplicate: perceptual hashes within this many bits"
    )
    p.add_argument("--link", action="store_true", help="hard-link the images instead of copying (same file system)")
    g = p.add_argument_group("plantvillage")
    g.add_argument("--variant", default="color", choices=plantvillage.VARIANTS)
    g.add_argument("--leaf-window", type=int, default=10, help="photo numbers per split group when no leaf map")
    g.add_argument(
        "--leaf-map", type=Path, default=None, help="PlantVillage-Dataset's leaf-map.json: exact leaf groups"
    )
    g = p.add_argument_group("plantdoc")
    g.add_argument("--mapping", type=Path, default=None, help='class table ([classes] "PlantDoc name" = "class id")')
    g = p.add_argument_group("csv and folders")
    g.add_argument("--domain", choices=["lab", "field"], default=None, help="lab (plain background) or field photos")
    g.add_argument("--source", default=None, help="source name in index.csv (default: SRC's name)")
    g.add_argument("--licence", default="not stated", help="licence of the photos, for the card")
    g.add_argument("--attribution", default="", help="who took or owns the photos, for the card")
    return p


def _collect(args: argparse.Namespace) -> Collected:
    src: Path = args.src
    if not src.exists():
        raise DatasetImportError(f"{src} does not exist")
    if args.format == "plantvillage":
        return plantvillage.collect(src, args.variant, args.leaf_window, args.leaf_map)
    if args.format == "plantdoc":
        return plantdoc.collect(src, args.mapping)
    if args.format == "ibean":
        return ibean.collect(src)
    if args.format == "cassava":
        return cassava.collect(src)
    info = generic.source_info(src, args.domain, args.source, args.licence, args.attribution)
    return generic.collect_csv(src, info) if args.format == "csv" else generic.collect_folders(src, info)


def summary(card: dict[str, Any], out: Path) -> str:
    skipped = ", ".join(f"{r} {n}" for r, n in card["skipped"].items()) or "none"
    nd = card["near_duplicates"]
    lines = [
        f"{card['images']} images in {len(card['classes'])} classes written to {out} "
        f"({', '.join(f'{d} {n}' for d, n in card['domains'].items())})",
        f"skipped {card['skipped_total']} ({skipped}); exact duplicates removed {card['exact_duplicates_removed']}; "
        f"label conflicts dropped {card['label_conflicts_removed']}; near-duplicate pairs {nd['pairs']}",
    ]
    if card.get("unmapped_classes"):
        lines.append("classes kept under their own names: " + ", ".join(card["unmapped_classes"]))
    lines.append(f"card: {out / 'card.md'}; train with: cropwatch train disease --data {out} --out RUN")
    return "\n".join(lines)


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # PIL logs every plugin it tries at DEBUG; nothing a person reading the import needs.
    logging.getLogger("PIL").setLevel(logging.WARNING)


def import_main(argv: list[str], prog: str) -> int:
    args = _import_parser(prog).parse_args(argv)
    _setup_logging()
    try:
        card = import_images(_collect(args), args.out, args.near_threshold, args.link)
    except DatasetImportError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    print(summary(card, args.out))
    return 0


def merge_main(argv: list[str], prog: str) -> int:
    p = argparse.ArgumentParser(
        prog=prog, description="Merge imported leaf datasets (lab and field, several crops) into one training set."
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="DIR", help="folders written by cropwatch data import")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--near-threshold", type=int, default=4)
    args = p.parse_args(argv)
    _setup_logging()
    try:
        card = merge.merge(args.inputs, args.out, args.near_threshold)
    except DatasetImportError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    print(summary(card, args.out))
    print(f"class map: {args.out / merge.CLASS_MAP}")
    return 0
