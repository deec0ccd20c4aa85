"""``cropwatch train TASK``: dispatch to the trainer of each model family.

``disease`` is :mod:`cloud_trainer.disease.train`; ``yield`` is ``cloud_trainer.yield_model.train``
Each entry names ``module:function`` with the signature ``(argv, prog) -> int``.
"""

from __future__ import annotations

import importlib
import sys

# task -> (module, one-line help)
TASKS: dict[str, tuple[str, str]] = {
    "disease": ("cloud_trainer.disease.train:cli", "leaf-disease image classifier (timm backbone)"),
    "yield": ("cloud_trainer.yield_model.train:main_cli", "season yield forecaster from a season cube"),
}


def _entry(spec: str):
    module_name, _, function = spec.partition(":")
    return getattr(importlib.import_module(module_name), function or "main")


def main(argv: list[str], prog: str) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: {prog} TASK [options]\n\ntasks:")
        for name, (_, help_) in TASKS.items():
            print(f"  {name:<10} {help_}")
        return 0 if argv else 2
    task = argv[0]
    if task not in TASKS:
        print(f"{prog}: unknown task {task!r}; choose from {', '.join(TASKS)}", file=sys.stderr)
        return 2
    spec = TASKS[task][0]
    module_name = spec.partition(":")[0]
    try:
        entry = _entry(spec)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            print(f"{prog} {task}: not implemented yet in this version of Cropwatch", file=sys.stderr)
            return 3
        raise
    return int(entry(argv[1:], f"{prog} {task}") or 0)
