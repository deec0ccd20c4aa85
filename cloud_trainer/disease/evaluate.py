"""``cropwatch evaluate RUN DATA...``: how far a run's answers can be trusted on other data.

Each DATA is a folder of class folders (or a ``path,label`` CSV). Images whose class the run does
not have (another crop) count as unknown: flagging them is right, answering them is wrong. Images
go through the device's own decode+resize (``shared.image``) and the run's network; the abstention
rule is the one in run.json (the same the manifest carries). ``--non-leaf`` adds the held-out
not-a-leaf frames (cloud_trainer/disease/nonleaf.py). The report (report.md, metrics.json,
risk_coverage.png) goes to ``--out`` (default RUN/eval-DATE).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.fsutil import atomic_write_text
from shared.image import decode_image

from . import dataset as ds, trust as T
from .export import LoadedRun, load_run

logger = logging.getLogger(__name__)


@dataclass
class Scored:
    name: str
    logits: np.ndarray
    labels: np.ndarray  # -1: a class the run does not have
    familiarity: np.ndarray | None = None
    leaf: np.ndarray | None = None


@torch.no_grad()
def outputs_of(run: LoadedRun, images: np.ndarray, batch: int = 32) -> list[np.ndarray]:
    """logits (+ familiarity and leaf with a trust head) of uint8 NHWC images, as the ONNX file gives them."""
    model = run.model.eval()
    parts = [model.all_outputs(torch.from_numpy(images[i : i + batch]))[1:] for i in range(0, len(images), batch)]
    return [np.concatenate([p[j].numpy() for p in parts]).astype(np.float64) for j in range(len(parts[0]))]


def _scored(run: LoadedRun, name: str, images: np.ndarray, labels: np.ndarray) -> Scored:
    out = outputs_of(run, images)
    fam, leaf = (out[1][:, 0], out[2][:, 0]) if len(out) == 3 else (None, None)
    return Scored(name, out[0], labels, fam, leaf)


def score_folder(run: LoadedRun, data: Path, name: str | None = None) -> Scored:
    dataset = ds.load_dataset(data, min_per_class=1)
    c2i = {c: i for i, c in enumerate(run.classes)}
    images = np.stack([ds.eval_array(s, run.image_size) for s in dataset.samples])
    labels = np.array([c2i.get(s.label, -1) for s in dataset.samples], dtype=np.int64)
    return _scored(run, name or _name(data), images, labels)


def score_frames(run: LoadedRun, frames: list[tuple[str, bytes]], name: str = "not a leaf") -> Scored:
    images = np.stack([decode_image(b, run.image_size, "center_crop") for _, b in frames])
    return _scored(run, name, images, np.full(len(frames), -1, dtype=np.int64))


def _name(data: Path) -> str:
    parts = data.resolve().parts
    return "/".join(parts[-2:]) if parts[-1] in ("train", "test", "val") else parts[-1]


def rule_of(run: LoadedRun) -> dict[str, Any]:
    rule = run.info.get("abstention")
    if not rule:
        raise ValueError(
            f"{run.run_dir} has no abstention rule in run.json (trained before it existed); retrain it, "
            "or evaluate with --score to fit one on its saved validation logits"
        )
    return dict(rule)


def evaluate(run: LoadedRun, sets: list[Scored], out_dir: Path, title: str = "") -> dict[str, dict[str, float]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    rule = rule_of(run)
    by, md = T.trust_report(
        out_dir, {s.name: (s.logits, s.labels, s.familiarity) for s in sets}, run.classes, rule, title
    )
    for s in sets:
        if s.leaf is not None and s.name in by:
            by[s.name]["not_a_leaf"] = float((s.leaf < rule.get("leaf_threshold", 0.5)).mean())
            # What an agent reports: not_a_leaf first, then uncertain below the score threshold.
            by[s.name]["rejected_or_flagged"] = float(
                ((s.leaf < rule.get("leaf_threshold", 0.5)) | (T.scores(s.logits, rule["temperature"], rule["score"],
                 s.familiarity) < rule["threshold"])).mean()
            )  # fmt: skip
    md += _gate_markdown(by)
    head = [
        f"# Evaluation of {run.run_dir.name}{': ' + title if title else ''}",
        "",
        "Unknown-class images (a crop or a frame the run has no class for) are wrong whenever answered; "
        "`flagged` is the share below the threshold (reported `uncertain` or `not_a_leaf` by an agent).",
        "",
    ]
    atomic_write_text(out_dir / "report.md", "\n".join(head) + md)
    ds.write_json(out_dir / "metrics.json", {"abstention": rule, "sets": by})
    return by


def _gate_markdown(by: dict[str, dict[str, float]]) -> str:
    rows = [(n, m) for n, m in by.items() if "not_a_leaf" in m]
    if not rows:
        return ""
    lines = ["## Leaf gate", "", "| set | images | not_a_leaf | not_a_leaf or uncertain |", "|---|---|---|---|"]
    lines += [f"| {n} | {int(m['n'])} | {m['not_a_leaf']:.3f} | {m['rejected_or_flagged']:.3f} |" for n, m in rows]
    return "\n".join(lines) + "\n"


def _protocol(name: str, root: Path, out: Path) -> int:
    from .protocols import run_protocol

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
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
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
            from .nonleaf import held_out_frames

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
