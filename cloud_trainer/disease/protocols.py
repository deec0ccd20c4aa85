"""The four field-trust protocols of docs/disease-model.md, each one command.

``cropwatch evaluate --protocol NAME --data-root DIR --out DIR``:

- ``lab``: train on part of ``leaf_sample`` (the trainer's own split), report its test split;
- ``unknown-crop``: the lab run on ``leaf_field_dev`` (beans it never learned): the share flagged;
- ``known-crop-field``: the lab run on ``leaf_field_apple/test``: answered, accuracy when answered,
  wrong-and-answered;
- ``few-shot``: the lab set plus K field photos per class from ``leaf_field_dev/train`` (and
  ``leaf_field_apple/train`` where present), tested on the matching ``test/``, for K in 5, 10, 40.

The lab run is trained once under OUT/lab and reused by the next protocols. Training uses the
demo's CPU recipe (frozen ImageNet Lite0 backbone at 128 px); ``--train-args`` changes it.
"""

from __future__ import annotations

import csv
import json
import logging
import shlex
from pathlib import Path
from typing import Any

from shared.fsutil import atomic_write_text

logger = logging.getLogger(__name__)

PROTOCOLS = ("lab", "unknown-crop", "known-crop-field", "few-shot")
TRAIN_ARGS = (
    "--arch tf_efficientnet_lite0 --image-size 128 --batch-size 16 --epochs 12 --patience 4 "
    "--backbone-lr-scale 0 --freeze-bn --lr 1e-2 --threads 1 --quiet"
)
# 10 first: the target of the issue; 5 and 40 show the trend.
SHOTS = (10, 5, 40)


def _train(data: Path, out: Path, train_args: str) -> Path:
    from cloud_trainer import train_cli

    if (out / "run.json").is_file():
        logger.info("reusing the finished run %s", out)
        return out
    rc = train_cli.main(["disease", "--data", str(data), "--out", str(out), *shlex.split(train_args)], "protocol")
    if rc != 0:
        raise RuntimeError(f"training {out} failed (exit {rc}); see the log above")
    return out


def lab_run(root: Path, out: Path, train_args: str) -> Path:
    return _train(root / "leaf_sample", out / "lab", train_args)


def _few_shot_csv(root: Path, field: Path, k: int, out: Path) -> Path:
    """leaf_sample (domain lab) plus the first K photos per class of ``field`` (domain field)."""
    rows = [
        (p.resolve(), p.parent.name, "lab")
        for p in sorted((root / "leaf_sample").rglob("*"))
        if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png")
    ]
    for class_dir in sorted(d for d in field.iterdir() if d.is_dir()):
        photos = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        rows += [(p.resolve(), class_dir.name, "field") for p in photos[:k]]
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "domain"])
        w.writerows([(str(p), label, d) for p, label, d in rows])
    return out


def run_protocol(name: str, root: Path, out: Path, train_args: str = TRAIN_ARGS) -> dict[str, Any]:
    """Run one protocol; returns its figures (also written to OUT/NAME/figures.json)."""
    from .evaluate import evaluate, score_folder, score_frames
    from .export import load_run
    from .nonleaf import held_out_frames

    lab = lab_run(root, out, train_args)
    figures: dict[str, Any] = {}
    if name == "lab":
        info = json.loads((lab / "run.json").read_text())
        figures["lab test split"] = info["metrics"]
        run = load_run(lab)
        figures |= evaluate(run, [score_frames(run, held_out_frames())], out / "not-a-leaf", "not-a-leaf frames")
    elif name == "unknown-crop":
        run = load_run(lab)
        sets = [score_folder(run, root / "leaf_field_dev" / s, f"beans {s}") for s in ("train", "test")]
        figures = evaluate(run, sets, out / name, "unknown crop (beans)")
    elif name == "known-crop-field":
        run = load_run(lab)
        figures = evaluate(run, [score_folder(run, root / "leaf_field_apple" / "test")], out / name, "apples, field")
    elif name == "few-shot":
        for k in SHOTS:
            for field in ("leaf_field_dev", "leaf_field_apple"):
                if not (root / field / "train").is_dir():
                    continue
                tag = f"{field}-{k}"
                data = _few_shot_csv(root, root / field / "train", k, out / name / f"{tag}.csv")
                run = load_run(_train(data, out / name / tag, train_args))
                test = score_folder(run, root / field / "test", f"{field}/test, {k} per class")
                figures |= evaluate(run, [test], out / name / f"{tag}-eval", f"few-shot {k} per class")
                # Each result is kept as it comes: the whole protocol is hours of CPU.
                atomic_write_text(out / name / "figures.partial.json", json.dumps(figures, indent=2, default=float))
    else:
        raise ValueError(f"unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)}")
    (out / name).mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / name / "figures.json", json.dumps(figures, indent=2, default=float))
    return figures
