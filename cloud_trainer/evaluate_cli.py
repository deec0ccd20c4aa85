"""``cropwatch evaluate``: a run on data folders, or one of the field-trust protocols.

See cloud_trainer/disease/evaluate.py (the report) and protocols.py (the four protocols).
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import torch

from .disease import dataset as ds
from .disease.evaluate import evaluate, score_folder, score_frames
from .disease.export import load_run


def _protocol(name: str, root: Path, out: Path) -> int:
    from .disease.protocols import run_protocol

    try:
        figures = run_protocol(name, root, out)
    except (ValueError, RuntimeError, ds.DatasetError, OSError) as exc:
        print(f"cropwatch evaluate --protocol {name}: {exc}")
        return 2
    for set_name, m in figures.items():
        shown = {k: round(v, 4) for k, v in m.items() if isinstance(v, float)}
        print(f"{name} | {set_name}: {shown}")
    print(f"figures: {out / name / 'figures.json'}")
    return 0


def main(argv: list[str], prog: str) -> int:
    p = argparse.ArgumentParser(
        prog=prog, description="How far a disease run can be trusted on other data (docs/disease-model.md)."
    )
    p.add_argument("run", type=Path, nargs="?", help="a finished disease training run")
    p.add_argument("data", type=Path, nargs="*", help="folders of class folders (or path,label CSVs)")
    p.add_argument(
        "--protocol",
        choices=["lab", "unknown-crop", "known-crop-field", "few-shot"],
        help="run one of the field-trust protocols instead (trains what it needs under --out; docs/disease-model.md)",
    )
    p.add_argument("--data-root", type=Path, default=Path("../shared/data"), help="the team data folder (protocols)")
    p.add_argument("--non-leaf", action="store_true", help="also the held-out not-a-leaf frames")
    p.add_argument("--out", type=Path, default=None, help="report folder (default RUN/eval-DATE)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.protocol:
        return _protocol(args.protocol, args.data_root, args.out or Path("protocol-runs"))
    if args.run is None or (not args.data and not args.non_leaf):
        p.error("give RUN and at least one DATA folder (or --non-leaf), or --protocol")
    try:
        run = load_run(args.run)
        sets = [score_folder(run, d) for d in args.data]
        if args.non_leaf:
            from .disease.nonleaf import held_out_frames

            sets.append(score_frames(run, held_out_frames()))
        out = args.out or args.run / f"eval-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}"
        by = evaluate(run, sets, out)
    except (ValueError, ds.DatasetError, OSError) as exc:
        print(f"{prog}: {exc}")
        return 2
    for name, m in by.items():
        print(
            f"{name}: n={int(m['n'])} accuracy {m['accuracy']:.3f} flagged {m['flagged']:.3f} "
            f"answered-accuracy {m['accuracy_answered']:.3f} wrong-and-answered {m['wrong_and_answered']:.3f} "
            f"confidently-wrong {m['confidently_wrong']:.3f} AURC {m['aurc']:.3f}"
            + (f" not_a_leaf {m['not_a_leaf']:.3f}" if "not_a_leaf" in m else "")
        )
    print(f"report: {out / 'report.md'}")
    return 0
