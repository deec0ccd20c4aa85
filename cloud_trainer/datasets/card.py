"""The dataset card: what was imported, from where, on what licence, and what was dropped.

``card.json`` is for programs (merge reads the sources' licences from it); ``card.md`` is the same
numbers for a person. Both are written by every import and merge.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.fsutil import atomic_write_text

CARD_JSON = "card.json"
CARD_MD = "card.md"
LISTED = 200  # file lists in the card stop here; duplicates.csv and the skipped list carry everything


@dataclass(frozen=True)
class SourceInfo:
    """Where images came from and on what terms; every image names one by ``name``."""

    name: str
    domain: str
    licence: str
    attribution: str
    url: str = ""


def write_card(
    out: Path,
    fmt: str,
    src: str,
    sources: dict[str, SourceInfo],
    rows: list[dict[str, str]],
    stats: dict[str, Any],
    notes: dict[str, Any],
) -> dict[str, Any]:
    """Write card.json and card.md for the kept ``rows`` (label, source, group); return the JSON."""
    per_class: dict[str, Counter[str]] = defaultdict(Counter)
    groups: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        per_class[r["label"]][r["source"]] += 1
        groups[r["label"]].add(r["group"])
    per_source = Counter(r["source"] for r in rows)
    skipped = stats["skipped"]
    near = stats["near_pairs"]
    card: dict[str, Any] = {
        "format": fmt,
        "source_path": src,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "images": len(rows),
        "classes": {c: sum(per_class[c].values()) for c in sorted(per_class)},
        "counts_by_class_and_source": {c: dict(sorted(per_class[c].items())) for c in sorted(per_class)},
        "groups_by_class": {c: len(groups[c]) for c in sorted(groups)},
        "sources": {
            name: {
                "images": per_source.get(name, 0),
                "domain": info.domain,
                "licence": info.licence,
                "attribution": info.attribution,
                "url": info.url,
            }
            for name, info in sorted(sources.items())
        },
        "domains": dict(sorted(Counter(sources[r["source"]].domain for r in rows).items())),
        "scanned": stats["scanned"],
        "skipped": dict(sorted(Counter(s["reason"] for s in skipped).items())),
        "skipped_total": len(skipped),
        "skipped_files": skipped[:LISTED],
        "exact_duplicates_removed": stats["exact_duplicates_removed"],
        "label_conflicts_removed": stats["label_conflicts_removed"],
        "label_conflicts": stats["label_conflicts"][:LISTED],
        "near_duplicates": {
            "threshold_bits": stats["near_threshold"],
            "pairs": len(near),
            "images": len({p for a, b, _ in near for p in (a, b)}),
            "cross_class_pairs": sum(1 for a, b, _ in near if a.split("/")[0] != b.split("/")[0]),
            "listed": [{"a": a, "b": b, "distance": d} for a, b, d in near[:LISTED]],
        },
        **notes,
    }
    atomic_write_text(out / CARD_JSON, json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out / CARD_MD, card_markdown(card))
    return card


def card_markdown(card: dict[str, Any]) -> str:
    sources = card["sources"]
    lines = [
        f"# Dataset card: {Path(card['source_path']).name or card['source_path']} ({card['format']})",
        "",
        f"Imported {card['created']} from `{card['source_path']}`: **{card['images']} images** in "
        f"{len(card['classes'])} classes, from {card['scanned']} files scanned.",
        "",
        "## Sources and licences",
        "",
        "| source | domain | images | licence | attribution |",
        "|---|---|---|---|---|",
    ]
    for name, s in sources.items():
        url = f" <{s['url']}>" if s["url"] else ""
        lines.append(f"| {name} | {s['domain']} | {s['images']} | {s['licence']} | {s['attribution']}{url} |")
    names = list(sources)
    lines += [
        "",
        "## Classes",
        "",
        "| class | images | leaf/plant groups | " + " | ".join(names) + " |",
        "|---|---|---|" + "---|" * len(names),
    ]
    for c, n in card["classes"].items():
        per = card["counts_by_class_and_source"][c]
        lines.append(
            f"| {c} | {n} | {card['groups_by_class'][c]} | " + " | ".join(str(per.get(s, 0)) for s in names) + " |"
        )
    nd = card["near_duplicates"]
    lines += [
        "",
        "## What was left out",
        "",
        f"- files skipped: {card['skipped_total']}"
        + ("".join(f"; {reason} {n}" for reason, n in card["skipped"].items()) if card["skipped"] else ""),
        f"- exact duplicates removed (same sha256, one copy kept): {card['exact_duplicates_removed']}",
        f"- images dropped because identical bytes carried different labels: {card['label_conflicts_removed']}",
        f"- near-duplicate pairs found (perceptual hash within {nd['threshold_bits']} of 64 bits): {nd['pairs']} "
        f"over {nd['images']} images, {nd['cross_class_pairs']} of them across classes; kept, and each "
        "same-class pair put in one split group",
        "",
        "Every removed duplicate and near-duplicate pair is listed in `duplicates.csv`; skipped files in `card.json`.",
    ]
    for key, title in (("class_mapping", "Class mapping"), ("unmapped_classes", "Classes kept under their own names")):
        if card.get(key):
            lines += ["", f"## {title}", ""]
            value = card[key]
            if isinstance(value, dict):
                lines += [f"- {a} -> {b}" for a, b in value.items()]
            else:
                lines += [f"- {v}" for v in value]
    if card.get("grouping"):
        lines += ["", "## Split groups", "", str(card["grouping"])]
    return "\n".join(lines) + "\n"
