"""``cropwatch models``: the registry (list, show, import, retire) and rollout (publish, rollback, promote,
end-shadow, status)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shared.errors import ManifestError
from shared.manifest import TrustedKeys

from .registry import Registry, RegistryError

ROLLOUT_ACTIONS = ("publish", "rollback", "status", "promote", "end-shadow")


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def _who() -> str:
    """Who publishes, for device_models.desired_by: the login name (the monitor passes its user)."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _parser(prog: str) -> argparse.ArgumentParser:
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
    pub = sub.add_parser("publish", help="make a version the farm's desired model (retained MQTT message)")
    pub.add_argument("name")
    pub.add_argument("version")
    pub.add_argument("--devices", nargs="+", help="only these device ids")
    pub.add_argument("--group", help="only devices in this rollout group ([device] groups in agent.toml)")
    pub.add_argument("--percent", type=float, default=100.0, help="share of devices, chosen by a stable hash")
    pub.add_argument(
        "--mode", choices=["active", "shadow"], default="active",
        help="shadow: run it as a challenger beside the champion on the selected devices",
    )  # fmt: skip
    rb = sub.add_parser("rollback", help="make the previously published version desired again")
    rb.add_argument("name")
    pro = sub.add_parser(
        "promote", help="make the live shadow challenger the champion everywhere, or widen the current publish"
    )
    pro.add_argument("name")
    es = sub.add_parser("end-shadow", help="end the shadow run: devices unload the challenger")
    es.add_argument("name")
    for p in (pub, rb, pro, es):
        p.add_argument("--farm", required=True)
        p.add_argument(
            "--db", help="monitor database URL: record device_models.desired_* for the devices the policy selects"
        )
        p.add_argument("--broker", required=True, help="mqtt://[user@]host:1883 or mqtts://...")
        p.add_argument("--ca-file", help="CA certificate for mqtts://")
        if p is not es:
            p.add_argument(
                "--base-url", required=p is pub, help="where agents download from (cropwatch registry serve)"
            )
            p.add_argument(
                "--signing-key", type=Path, help="Ed25519 private key: sign the whole message (rollout policy too)"
            )
    st = sub.add_parser("status", help="rollout table from the monitor database")
    st.add_argument("name")
    st.add_argument("--farm", required=True)
    st.add_argument("--db", required=True, help="monitor database URL (sqlite:///... or postgresql+psycopg://...)")
    st.add_argument("--json", action="store_true")
    for p in (ls, show, imp, ret, pub, rb, pro, es, st):
        # Also accepted after the action (`models publish ... --registry DIR`), as operators tend to write it.
        p.add_argument("--registry", type=Path, default=argparse.SUPPRESS, help="registry folder")
    return parser


def main(argv: list[str], prog: str = "cropwatch models") -> int:
    args = _parser(prog).parse_args(argv)
    registry = Registry(args.registry)

    if args.action in ROLLOUT_ACTIONS:
        return _rollout(args, registry, prog)
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


def _rollout(args: argparse.Namespace, registry: Registry, prog: str) -> int:
    import os

    from . import rollout
    from .mqtt_publish import PublishError, broker_publisher

    try:
        if args.action == "status":
            return _status(args, registry)
        publisher = broker_publisher(args.broker, args.ca_file, os.environ.get("CROPWATCH_MQTT_PASSWORD"))
        signing_key = None
        if getattr(args, "signing_key", None) is not None:
            from shared.manifest import load_private_key

            signing_key = load_private_key(args.signing_key)
        db_url, by = args.db, _who()
        if args.action == "publish":
            from shared.messages import RolloutPolicy

            policy = RolloutPolicy(mode=args.mode, percent=args.percent, devices=args.devices, group=args.group)
            d = rollout.publish(
                registry, args.name, args.version, args.farm, args.base_url, publisher, policy,
                signing_key=signing_key, db_url=db_url, by=by,
            )  # fmt: skip
            what = "as shadow challenger " if policy.mode == "shadow" else ""
            print(
                f"published {d.model_name} {d.version} {what}to farm {d.farm_id} ({policy.percent:g}%, msg {d.msg_id})"
            )
        elif args.action == "rollback":
            d = rollout.rollback(
                registry, args.name, args.farm, publisher, args.base_url, signing_key=signing_key, db_url=db_url, by=by
            )
            print(f"rolled back {d.model_name} on farm {d.farm_id} to {d.version} (was {d.previous_version})")
        elif args.action == "promote":
            d = rollout.promote(
                registry, args.name, args.farm, publisher, args.base_url, signing_key=signing_key, db_url=db_url, by=by
            )
            was = f" (champion was {d.previous_version})" if d.previous_version else ""
            print(f"promoted {d.model_name} {d.version} to every device of farm {d.farm_id}{was}")
        elif args.action == "end-shadow":
            rollout.end_shadow(registry, args.name, args.farm, publisher, db_url=db_url, by=by)
            print(f"ended the shadow run of {args.name} on farm {args.farm}; devices unload the challenger")
    except (RegistryError, ManifestError, PublishError, ValueError, OSError) as exc:
        print(f"{prog} {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0


def _status(args: argparse.Namespace, registry: Registry) -> int:
    from .desired import rollout_status

    rows = rollout_status(args.db, args.farm, args.name, registry)
    if args.json:
        print(json.dumps(rows))
    elif not rows:
        print(f"no devices of farm {args.farm} in {args.db}")
    else:
        header = ["device", "role", "desired", "active", "state", "since"]
        print(_table([[r[h] for h in header] for r in rows], header))
    return 0
