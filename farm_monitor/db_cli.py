"""``cropwatch db migrate|prune|size``: maintenance of the monitor database."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import UTC, datetime

from shared.config import load_config
from shared.errors import ConfigError

from .config import MonitorConfig

logger = logging.getLogger(__name__)


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Maintain the monitor database.")
    parser.add_argument("--config", "-c", help="monitor.toml (CROPWATCH_* environment variables override it)")
    parser.add_argument("--url", help="database URL (overrides [database] url)")
    sub = parser.add_subparsers(dest="action", required=True)
    mig = sub.add_parser("migrate", help="create or upgrade the schema (keeps the data)")
    mig.add_argument("--to", type=int, help="stop at this version (default: latest)")
    pr = sub.add_parser("prune", help="delete rows older than each table's retention ([retention] days)")
    pr.add_argument("--dry-run", action="store_true", help="count what would be deleted")
    sz = sub.add_parser("size", help="database size on disk and rows per table")
    sz.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _human(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


def main(argv: list[str], prog: str = "cropwatch db") -> int:
    args = _parser(prog).parse_args(argv)
    logging.basicConfig(level="INFO", format="%(levelname)s %(name)s: %(message)s")
    from .db import LATEST_VERSION, current_version, make_engine, migrate
    from .db.retention import database_size, prune

    try:
        cfg = load_config(MonitorConfig, args.config)
        if args.url:
            cfg.database.url = args.url
        engine = make_engine(cfg.database, writer=True)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    try:
        if args.action == "migrate":
            before = current_version(engine)
            applied = migrate(engine, target=args.to, timescaledb=cfg.database.timescaledb)
            after = current_version(engine)
            print(f"schema version {before} -> {after} (latest {LATEST_VERSION}); applied {applied or 'nothing'}")
            return 0
        version = current_version(engine)
        if version < LATEST_VERSION:
            print(
                f"{prog}: the database is at schema version {version}, this Cropwatch needs {LATEST_VERSION}; "
                f"run '{prog} migrate' first",
                file=sys.stderr,
            )
            return 2
        if args.action == "prune":
            result = prune(engine, cfg.retention, datetime.now(UTC), dry_run=args.dry_run)
            verb = "would delete" if args.dry_run else "deleted"
            for table, n in result.items():
                print(f"{table:<16} {verb} {n} rows (older than {cfg.retention.days[table]} days)")
            return 0
        total, sizes = database_size(engine)
        if args.json:
            print(json.dumps({"total_bytes": total, "tables": [s.__dict__ for s in sizes]}, indent=2))
            return 0
        print(f"{'table':<18} {'rows':>12} {'size':>12}")
        for s in sizes:
            print(f"{s.table:<18} {s.rows:>12} {_human(s.bytes):>12}")
        print(f"{'total on disk':<18} {'':>12} {_human(total):>12}")
        return 0
    finally:
        engine.dispose()
