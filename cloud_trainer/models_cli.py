"""``cropwatch models``: the model registry (list, show, import, retire)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shared.errors import ManifestError
from shared.manifest import TrustedKeys

from .registry import Registry, RegistryError

ROLLOUT_ACTIONS = ("publish", "rollback", "status", "promote")


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def main(argv: list[str], prog: str = "cropwatch models") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--registry", type=Path, default=Path("var/registry"), help="registry folder")
    sub = parser.add_subparsers(dest="action", required=True)
    ls = sub.add_parser("list", help="versions in the registry")
    ls.add_argument("name", nargs="?")
    ls.add_argument("--json", action="store_true")
    show = sub.add_parser("show", help="one version's manifest")
    show.add_argument("name")
    show.add_argument("version")
    imp = sub.add_parser("import", help="verify a signed manifest and its files, then add them")
    imp.add_argument("manifest", type=Path, help="manifest.json beside the ONNX files")
    imp.add_argument("--trusted-key", action="append", required=True, help="public key file (repeatable)")
    ret = sub.add_parser("retire", help="mark a version retired (kept, no longer published)")
    ret.add_argument("name")
    ret.add_argument("version")
    ret.add_argument("--reason", required=True)
    for action in ROLLOUT_ACTIONS:
        sub.add_parser(action, help="rollout (not in this version yet)").add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    registry = Registry(args.registry)

    if args.action in ROLLOUT_ACTIONS:
        print(f"{prog} {args.action}: not implemented yet in this version of Cropwatch", file=sys.stderr)
        return 3
    try:
        if args.action == "list":
            entries = registry.entries(args.name)
            if args.json:
                print(json.dumps([{"name": e.name, "version": e.version, "retired": bool(e.retired)} for e in entries]))
                return 0
            if not entries:
                print(f"no models in {args.registry}; add one with '{prog} import MANIFEST --trusted-key KEY.pub'")
                return 0
            rows = [
                [
                    e.name,
                    e.version,
                    e.manifest.task,
                    e.manifest.created_at.strftime("%Y-%m-%d %H:%M"),
                    ",".join(f.variant for f in e.manifest.files),
                    " ".join(f"{k}={v:.3g}" for k, v in sorted(e.manifest.metrics.items())[:3]),
                    "retired" if e.retired else ("synthetic" if e.manifest.synthetic else ""),
                ]
                for e in entries
            ]
            print(_table(rows, ["name", "version", "task", "created", "variants", "metrics", "note"]))
        elif args.action == "show":
            print(registry.get(args.name, args.version).manifest.to_json())
        elif args.action == "import":
            trusted = TrustedKeys.from_sources(args.trusted_key)
            entry, created = registry.import_version(args.manifest, trusted)
            print(f"{'imported' if created else 'already present, identical:'} {entry.name} {entry.version}")
        elif args.action == "retire":
            entry = registry.retire(args.name, args.version, args.reason)
            print(f"retired {entry.name} {entry.version}: {args.reason}")
    except (RegistryError, ManifestError, FileNotFoundError) as exc:
        print(f"{prog} {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0
