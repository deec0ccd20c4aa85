"""``cropwatch evaluate RUN DATA...``: how far a run's answers can be trusted on other data.

Each DATA is a folder of class folders (or a ``path,label`` CSV). Images whose class the run does
not have (another crop) count as unknown: flagging them is right, answering them is wrong. Images
go through the device's own decode+resize (``shared.image``) and the run's network; the abstention
rule is the one in run.json (the same the manifest carries). ``--non-leaf`` adds the held-out
not-a-leaf frames (cloud_trainer/disease/nonleaf.py). The report (report.md, metrics.json,
risk_coverage.png) goes to ``--out`` (default RUN/eval-DATE).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.fsutil import atomic_write_text
from shared.image import decode_image

from . import dataset as ds, trust as T
from .export import LoadedRun

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
