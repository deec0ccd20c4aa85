"""``cropwatch data SUBCOMMAND``: dataset builders, each in its own module.

Each entry maps a subcommand to ``module:function`` with the signature ``(argv, prog) -> int``;
modules are imported only when their subcommand runs, so one missing dependency does not break
the others.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module:function, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "synth-leaves": ("cloud_trainer.disease.synth:main", "draw synthetic leaf photos with lesions into class folders"),
    "synth-yield": ("cloud_trainer.yield_model.data_cmds:synth_yield_main", "synthetic season cube with a known yield"),
    "iowa-cube": ("cloud_trainer.yield_model.data_cmds:iowa_cube_main", "Iowa county-season cube from the team data"),
    "export-labels": (
        "farm_monitor.labels:export_labels_main",
        "monitor labels: class folders + CSV",
    ),
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
    module_name, _, function = SUBCOMMANDS[name][0].partition(":")
    entry = getattr(importlib.import_module(module_name), function or "main")
    return int(entry(argv[1:], f"{prog} {name}") or 0)
