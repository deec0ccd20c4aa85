"""``cropwatch export RUN_DIR``: export a training run with the exporter of its task.

The task is read from ``RUN_DIR/run.json`` (key ``task``), which every trainer writes when a run
finishes. Each exporter is ``module:function`` with the signature ``(argv, prog) -> int`` and receives the
full argv (RUN_DIR first).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .dispatch import resolve

# task in run.json -> exporter module
EXPORTERS: dict[str, str] = {
    "disease_classification": "cloud_trainer.disease.export:main",
    "yield_forecast": "cloud_trainer.yield_model.export:main_cli",
}


def run_task(run_dir: Path) -> str:
    path = run_dir / "run.json"
    if not path.is_file():
        raise ValueError(f"{run_dir} is not a finished training run: {path} is missing (did training complete?)")
    try:
        task = json.loads(path.read_text(encoding="utf-8"))["task"]
    except (ValueError, KeyError) as exc:
        raise ValueError(f"{path} does not name the run's task ({exc})") from exc
    if task not in EXPORTERS:
        raise ValueError(f"{path}: unknown task {task!r}; known: {', '.join(EXPORTERS)}")
    return task


def main(argv: list[str], prog: str) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(
            f"usage: {prog} RUN_DIR [options]\n\nExports with the run's own exporter; "
            f"'{prog} RUN_DIR --help' lists its options. Tasks: {', '.join(EXPORTERS)}"
        )
        return 0 if argv else 2
    if argv[0].startswith("-"):
        print(f"{prog}: RUN_DIR comes first (the exporter and its options depend on the run's task)", file=sys.stderr)
        return 2
    try:
        task = run_task(Path(argv[0]))
    except ValueError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    module_name = EXPORTERS[task].partition(":")[0]
    try:
        entry = resolve(EXPORTERS[task])
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            print(f"{prog}: exporting {task} runs is not implemented yet in this version", file=sys.stderr)
            return 3
        raise
    return int(entry(argv, prog) or 0)
