"""``cropwatch data export-labels``: the labelled-sample export (:mod:`fleet.labels`) from monitor.toml.

The export itself is fleet code the retrainer shares; this command only reads the monitor's config
for its database URL.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fleet.labels import export_labels

from .config import command_config


def export_labels_main(argv: list[str], prog: str = "cropwatch data export-labels") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Write the samples labelled in the monitor as class folders plus labels.csv (path,label) "
        "for 'cropwatch train disease --data OUT/labels.csv'.",
    )
    parser.add_argument("--config", "-c", help="monitor.toml (its database.url is read)")
    parser.add_argument("--db", help="database URL (overrides the config)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--farm", action="append", default=[], help="only this farm (repeat)")
    parser.add_argument("--days", type=float, help="only labels from the last N days")
    args = parser.parse_args(argv)
    cfg = command_config(args.config, prog)
    if isinstance(cfg, int):
        return cfg
    from .db import make_engine

    engine = make_engine(args.db or cfg.database.url)
    since = datetime.now(UTC) - timedelta(days=args.days) if args.days else None
    try:
        n = export_labels(engine, args.out, args.farm or None, since)
    except Exception as exc:
        print(f"{prog}: export failed: {exc}", file=sys.stderr)
        return 1
    if n == 0:
        print(f"{prog}: no labelled samples yet; label some on the monitor's Detections page", file=sys.stderr)
        return 1
    print(f"exported {n} labelled samples to {args.out} ({args.out / 'labels.csv'})")
    return 0
