"""``cropwatch bridge KIND ...``: picks the bridge by name and hands it the rest of the arguments."""

from __future__ import annotations

import importlib
import sys

# kind -> (module with main(argv, prog), one-line help)
BRIDGES: dict[str, tuple[str, str]] = {
    "lorawan": ("bridges.lorawan.cli", "LoRaWAN network server (ChirpStack v4, The Things Stack v3) to Cropwatch"),
}


def _usage(prog: str) -> str:
    lines = [f"usage: {prog} KIND [options]", "", "bridges:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in BRIDGES.items()]
    lines += ["", f"Run '{prog} KIND --help' for a bridge's options."]
    return "\n".join(lines)


def main(argv: list[str], prog: str = "cropwatch bridge") -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(prog))
        return 0 if argv else 2
    kind, rest = argv[0], argv[1:]
    if kind not in BRIDGES:
        print(f"{prog}: unknown bridge {kind!r}; known: {', '.join(BRIDGES)}", file=sys.stderr)
        return 2
    module = importlib.import_module(BRIDGES[kind][0])
    return int(module.main(rest, prog=f"{prog} {kind}") or 0)
