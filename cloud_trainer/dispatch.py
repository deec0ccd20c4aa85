"""Subcommand tables of the trainer's CLIs: ``name -> ("module:function", help)``.

Modules are imported only when their subcommand runs, so one missing dependency does not break the
others; each function has the signature ``(argv, prog) -> int``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

Entry = Callable[[list[str], str], int]


def resolve(spec: str) -> Entry:
    module_name, _, function = spec.partition(":")
    return getattr(importlib.import_module(module_name), function or "main")


def dispatch(table: dict[str, tuple[str, str]], argv: list[str], prog: str, what: str = "subcommand") -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: {prog} {what.upper()} [options]\n\n{what}s:")
        for name, (_, help_) in table.items():
            print(f"  {name:<14} {help_}")
        return 0 if argv else 2
    name = argv[0]
    if name not in table:
        print(f"{prog}: unknown {what} {name!r}; choose from {', '.join(table)}", file=sys.stderr)
        return 2
    spec = table[name][0]
    module_name = spec.partition(":")[0]
    try:
        entry = resolve(spec)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            print(f"{prog} {name}: not implemented yet in this version of Cropwatch", file=sys.stderr)
            return 3
        raise
    return int(entry(argv[1:], f"{prog} {name}") or 0)
