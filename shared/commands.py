"""Subcommands that need only the contract: version, schema, keys."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from . import SCHEMA_VERSION, __version__, wire
from .messages import json_schemas


def _version(argv: list[str], prog: str) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Print versions of Cropwatch and its runtime.")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    info = {"cropwatch": __version__, "schema_version": SCHEMA_VERSION, "python": platform.python_version()}
    for dist in ("onnxruntime", "onnxruntime-gpu", "paho-mqtt", "pydantic", "torch", "streamlit", "sqlalchemy"):
        try:
            info[dist] = version(dist)
        except PackageNotFoundError:
            continue
    if args.json:
        print(json.dumps(info))
    else:
        for k, v in info.items():
            print(f"{k:<16} {v}")
    return 0


def _schema(argv: list[str], prog: str) -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Print the JSON Schema of every message kind. Device messages may also travel as CBOR or in "
        "zstd batches (the same schema, another encoding): --wire lists those forms.",
    )
    parser.add_argument("--kind", help="only this kind (e.g. detection, ping, desired_model)")
    parser.add_argument("--wire", action="store_true", help="print the wire forms (MQTT v5 content types) instead")
    args = parser.parse_args(argv)
    if args.wire:
        forms = [{"content_type": c, "payload_format_indicator": p, "payload": w} for c, p, w in wire.FORMS]
        print(json.dumps(forms, indent=2))
        return 0
    schemas = json_schemas()
    if args.kind:
        if args.kind not in schemas:
            print(f"{prog}: unknown kind {args.kind!r}; choose from {', '.join(schemas)}", file=sys.stderr)
            return 2
        schemas = {args.kind: schemas[args.kind]}
    print(json.dumps(schemas, indent=2, sort_keys=True))
    return 0


def _keys(argv: list[str], prog: str) -> int:
    from .manifest import generate_keypair

    parser = argparse.ArgumentParser(prog=prog, description="Manage Ed25519 model-signing keys.")
    sub = parser.add_subparsers(dest="action", required=True)
    gen = sub.add_parser("generate", help="write NAME.key (private, 0600) and NAME.pub into DIR")
    gen.add_argument("--out", type=Path, default=Path("keys"), help="directory (default: ./keys)")
    gen.add_argument("--name", default="cropwatch-signing", help="file name stem (default: cropwatch-signing)")
    args = parser.parse_args(argv)
    try:
        private, public, kid = generate_keypair(args.out, args.name)
    except FileExistsError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    print(f"key id      {kid}\nprivate key {private}  (keep secret; used by 'cropwatch export')")
    print(f"public key  {public}  (give to agents as a trusted key)")
    return 0


_HANDLERS = {"version": _version, "schema": _schema, "keys": _keys}


def main(argv: list[str], prog: str) -> int:
    name = prog.split()[-1]
    return _HANDLERS[name](argv, prog)
