"""``cropwatch data SUBCOMMAND``: dataset builders, each in its own module.

Each entry maps a subcommand to a module exposing ``main(argv, prog) -> int``; modules are
imported only when their subcommand runs, so one missing dependency does not break the others.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "synth-leaves": ("cloud_trainer.disease.synth", "draw synthetic leaf photos with lesions into class folders"),
}


def main(argv: list[str], prog: str) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: {prog} SUBCOMMAND [options]\n\nsubcommands:")
        for name, (_, help_) in SUBCOMMANDS.items():
            print(f"  {name:<14} {help_}")
        return 0 if argv else 2
    name = argv[0]
    if name not in SUBCOMMANDS:
        print(f"{prog}: unknown subcommand {name!r}; choose from {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return int(module.main(argv[1:], prog=f"{prog} {name}") or 0)
