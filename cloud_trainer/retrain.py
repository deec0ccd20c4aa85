"""``cropwatch retrain disease``: field labels from the monitor -> fine-tuned candidate -> evaluation gate.

Steps, each written into the new run folder so the run can be audited later:

1. export the samples agronomists labelled in the monitor (``farm_monitor.labels.export_labels``);
2. merge them with the base run's dataset, copying every image once under its sha256
   (``data/images/ab/abcd....jpg``): a field photo whose bytes are already in the base data is a
   duplicate and dropped, so the base run's fixed test set cannot leak into training;
3. hold out part of the new field labels per class (``field_test.csv``, deterministic: ordered by a
   seeded hash of the image) and put the rest into train/val (``split.csv``); the base run's
   train/val/test assignment is kept as it was;
4. fine-tune from the base run's model (``train.main`` with ``--init`` and ``--split``);
5. evaluate base and candidate on the fixed test set and on the field test set, and apply the gate
   (``gate/report.json``, ``gate/report.md``, ``gate/per_class.png``);
6. export ONNX + signed manifest, import it into the registry (retired at once when the gate
   failed, so it cannot be published by mistake), record the run and its labels in the monitor
   database (lineage) and, when the gate passed and a farm is given, publish it as shadow.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import io
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared.fsutil import atomic_write_text

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_GATE_FAILED = 10
METRICS = ("accuracy", "macro_f1")


class RetrainError(RuntimeError):
    """Retraining cannot go on; the message says what is missing and what to do."""


@dataclass
class FieldItem:
    msg_id: str
    label: str
    labelled_by: str
    labelled_at: str
    sha256: str
    path: Path
    role: str = "train"


@dataclass
class GateResult:
    passed: bool
    metric: str
    reasons: list[str]
    fixed: dict[str, Any]
    field: dict[str, Any]
    thresholds: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "metric": self.metric,
            "reasons": self.reasons,
            "thresholds": self.thresholds,
            "fixed_test": self.fixed,
            "field_test": self.field,
            **self.extra,
        }


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by ``retrain disease`` and the ``[train]``/``[gate]`` tables of retrain.toml."""
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--lr", type=float, default=3e-4, help="head learning rate (backbone: x0.3)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--patience", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--field-test-frac", type=float, default=0.3, help="share of new field labels held out per class")
    p.add_argument("--field-val-frac", type=float, default=0.2, help="share of the remaining field labels for val")
    p.add_argument(
        "--field-oversample",
        type=int,
        default=1,
        help="repeat each field training image this many times per epoch (field labels are few beside the base data)",
    )
    p.add_argument("--metric", choices=METRICS, default="accuracy", help="what the gate compares")
    p.add_argument(
        "--max-regression",
        type=float,
        default=0.01,
        help="largest drop of the metric on the fixed test set the gate accepts (0.01 = one point)",
    )
    p.add_argument(
        "--min-field-gain",
        type=float,
        default=0.0,
        help="the candidate must beat the base model on the field test set by more than this",
    )
    p.add_argument(
        "--min-field-test",
        type=int,
        default=5,
        help="fewer field test images than this fail the gate (a gain on one or two images is chance)",
    )
    p.add_argument(
        "--train-bn",
        action="store_true",
        help="let BatchNorm statistics move during fine-tuning (default: frozen, so a few field photos of another "
        "look do not shift what the base model knew)",
    )
    p.add_argument("--no-int8", action="store_true", help="export fp32 only")


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Fine-tune the base run on the field labels from the monitor; publish the candidate as shadow "
        "only when the evaluation gate passes. Exit 0: gate passed; 10: gate failed (not an error); 1/2: error.",
    )
    p.add_argument("--db", required=True, help="monitor database URL (sqlite:///... or postgresql+psycopg://...)")
    p.add_argument("--base", required=True, type=Path, help="the base training run folder (its model is fine-tuned)")
    p.add_argument("--since", default=None, help="only labels entered from then on (ISO 8601; no offset: UTC)")
    p.add_argument("--farm", action="append", default=[], help="only labels of this farm's samples (repeat)")
    p.add_argument("--out", type=Path, default=None, help="new run folder (default: BASE/../retrain-VERSION)")
    p.add_argument("--name", default="leaf-disease", help="model name in the registry")
    p.add_argument("--version", default=None, help="candidate version (default: UTC date-time)")
    p.add_argument("--base-version", default=None, help="registry version of the base model (default: looked up)")
    p.add_argument("--key", type=Path, default=Path("keys/cropwatch-signing.key"), help="Ed25519 signing key")
    p.add_argument("--registry", type=Path, default=Path("var/registry"), help="registry folder")
    add_training_arguments(p)
    pub = p.add_argument_group("shadow publish (only when the gate passes)")
    pub.add_argument("--publish-farm", help="publish the candidate as shadow to this farm")
    pub.add_argument("--broker", help="mqtt://[user@]host:1883 or mqtts://...")
    pub.add_argument("--ca-file", help="CA certificate for mqtts://")
    pub.add_argument("--base-url", help="where agents download from (cropwatch registry serve)")
    pub.add_argument("--shadow-devices", nargs="+", help="the devices that run the challenger")
    pub.add_argument("--shadow-percent", type=float, default=100.0, help="share of devices (stable hash)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


# --- data ---------------------------------------------------------------------------------------


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _store(images: Path, src: Path, digest: str) -> str:
    """Copy (hard-link when possible) ``src`` to its content address; the path relative to ``data/``."""
    rel = f"images/{digest[:2]}/{digest}{src.suffix.lower() or '.jpg'}"
    dst = images.parent / rel
    # A rerun after a crash finds the files of the first try: reuse one only when its bytes are right.
    if dst.exists() and sha256_bytes(dst.read_bytes()) == digest:
        return rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)  # the content address never names a half-written file
    return rel


def field_split(items: list[FieldItem], test_frac: float, val_frac: float, seed: int) -> None:
    """Assign roles per class: field_test, val, train. Deterministic: order by a seeded hash of the image."""
    if not (0 < test_frac < 1 and 0 <= val_frac < 1):
        raise RetrainError(f"--field-test-frac {test_frac} must be in (0, 1) and --field-val-frac {val_frac} in [0, 1)")
    by_class: dict[str, list[FieldItem]] = {}
    for it in items:
        by_class.setdefault(it.label, []).append(it)
    for label, group in by_class.items():
        group.sort(key=lambda it: hashlib.sha256(f"{seed}:{it.sha256}".encode()).hexdigest())
        n = len(group)
        n_test = max(1, round(n * test_frac)) if n >= 2 else 0
        rest = n - n_test
        n_val = round(rest * val_frac) if rest >= 3 else 0
        for i, it in enumerate(group):
            it.role = "field_test" if i < n_test else ("val" if i < n_test + n_val else "train")
        logger.info("field labels %s: %d test, %d val, %d train", label, n_test, n_val, rest - n_val)


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


@dataclass
class Merged:
    classes: list[str]
    field: list[FieldItem]
    counts: dict[str, Any]
    labels_until: dt.datetime | None


def merge(base: Path, export_dir: Path, run: Path, args: argparse.Namespace) -> Merged:
    """Write run/data/{dataset.csv,field_test.csv,images/} and run/split.csv from the base run and the export."""
    from tqdm import tqdm

    from .disease import dataset as ds

    info = json.loads((base / "run.json").read_text())
    classes = list(info["classes"])
    data_path = _base_data_path(base, info)
    base_data = ds.load_dataset(data_path, min_per_class=1)
    base_split = ds.load_split(base / "split.csv", base_data)
    # A retrained base carries field rows with the labels they had then; they come fresh from the
    # export instead (latest label), else a correction would be dropped as a duplicate of its old self.
    inherited_field = _field_rows(data_path)
    data_dir = run / "data"
    images = data_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    seen: dict[str, str] = {}  # sha256 -> where it came from
    dataset_rows: list[list[Any]] = []
    split_rows: list[list[Any]] = []
    dup_base = dropped_field = 0
    total = sum(len(v) for v in base_split.values())
    bar = tqdm(total=total, desc="merge base data", unit="img", disable=args.quiet, leave=False)
    for name in ds.SPLITS:
        for s in base_split[name]:
            bar.update()
            if s.rel in inherited_field:
                dropped_field += 1
                continue
            digest = sha256_bytes(s.path.read_bytes())
            if digest in seen:
                dup_base += 1
                continue
            seen[digest] = f"base:{name}"
            rel = _store(images, s.path, digest)
            dataset_rows.append([rel, s.label, "base", ""])
            split_rows.append([name, s.label, rel])
    bar.close()

    if dropped_field:
        logger.info("%d field row(s) of the base run left out: field labels come from the export", dropped_field)
    rows = _read_csv(export_dir / "labels.csv")
    field: list[FieldItem] = []
    dup_field = unknown = 0
    newest: dt.datetime | None = None
    for r in rows:
        path = export_dir / r["path"]
        digest = sha256_bytes(path.read_bytes())
        item = FieldItem(r["msg_id"], r["label"], r["labelled_by"], r["labelled_at"], digest, path)
        at = _parse_time(r["labelled_at"])
        newest = at if newest is None or at > newest else newest
        if digest in seen:
            item.role = "duplicate"
            dup_field += 1
        elif r["label"] not in classes:
            # Fine-tuning keeps the classifier head; a new class needs a new base training.
            item.role = "unknown_class"
            unknown += 1
        else:
            seen[digest] = "field"
        field.append(item)
    # Content order, not arrival order: the same labels give the same run whichever device sent first.
    usable = sorted((it for it in field if it.role not in ("duplicate", "unknown_class")), key=lambda it: it.sha256)
    if unknown:
        names = sorted({it.label for it in field if it.role == "unknown_class"})
        logger.warning(
            "%d field label(s) name classes the base model does not have (%s); skipped (train a new base for them)",
            unknown,
            ", ".join(names),
        )
    field_split(usable, args.field_test_frac, args.field_val_frac, args.seed)
    n_test = sum(it.role == "field_test" for it in usable)
    if n_test == 0:
        raise RetrainError(
            f"{len(usable)} new field label(s) after removing {dup_field} duplicate(s) and {unknown} of unknown "
            "classes: too few to hold out a field test set (a class needs 2 labelled samples); label more samples "
            "on the monitor's Detections page"
        )
    test_rows = []
    for it in usable:
        rel = _store(images, it.path, it.sha256)
        if it.role == "field_test":
            test_rows.append([rel, it.label, it.msg_id])
            continue
        dataset_rows.append([rel, it.label, "field", it.msg_id])
        repeats = max(1, args.field_oversample) if it.role == "train" else 1
        split_rows.extend([[it.role, it.label, rel]] * repeats)
    _write_csv(data_dir / "dataset.csv", ["path", "label", "origin", "msg_id"], dataset_rows)
    _write_csv(data_dir / "field_test.csv", ["path", "label", "msg_id"], test_rows)
    _write_csv(run / "split.csv", ["split", "label", "path"], split_rows)
    atomic_write_text(
        data_dir / "SOURCE.txt",
        f"Base run {base} ({info['dataset_fingerprint']}) merged with {len(rows)} field labels from the monitor; "
        "images stored by sha256.\n",
    )
    counts = {
        "base_images": sum(1 for r in dataset_rows if r[2] == "base"),
        "base_duplicates": dup_base,
        "field_labels": len(rows),
        "field_duplicates": dup_field,
        "field_unknown_class": unknown,
        "field_train": sum(it.role == "train" for it in usable),
        "field_val": sum(it.role == "val" for it in usable),
        "field_test": n_test,
        "field_oversample": max(1, args.field_oversample),
    }
    return Merged(classes, field, counts, newest)


def _base_data_path(base: Path, info: dict[str, Any]) -> Path:
    """The base run's data; a relative path is relative to where that run was trained (``cwd`` in run.json)."""
    data = Path(info["data"])
    if data.is_absolute():
        return data
    if info.get("cwd"):
        return Path(info["cwd"]) / data
    if not data.exists():
        raise RetrainError(
            f"the base run {base} was trained on the relative data path {data}, which is relative to the folder "
            "the base run was trained in and does not exist here; run from that folder, or retrain the base with "
            "an absolute --data path"
        )
    return data.resolve()


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _field_rows(data: Path) -> set[str]:
    """Paths of a retrained run's ``dataset.csv`` rows that did not come from the original base data."""
    if data.suffix.lower() != ".csv" or not data.is_file():
        return set()
    rows = _read_csv(data)
    return {r["path"] for r in rows if "origin" in r and r["origin"] != "base"}


def _parse_time(value: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(value.strip())
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


# --- evaluation and gate ------------------------------------------------------------------------


def evaluate_run(run_dir: Path, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, Any]:
    from .disease import metrics as M
    from .disease.export import load_run, run_torch

    loaded = load_run(run_dir)
    if loaded.classes != classes:
        raise RetrainError(f"{run_dir} predicts {loaded.classes}, expected {classes}")
    probs = run_torch(loaded.model, images)
    m = M.classification_metrics(probs, labels, classes)
    m.pop("confusion_matrix", None)
    return m


def load_images(rows: list[tuple[Path, str]], size: int, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    from shared.image import decode_image

    c2i = {c: i for i, c in enumerate(classes)}
    arrays = [decode_image(p.read_bytes(), size, "center_crop") for p, _ in rows]
    x = np.stack(arrays) if arrays else np.zeros((0, size, size, 3), np.uint8)
    return x, np.array([c2i[label] for _, label in rows], dtype=np.int64)


def decide(
    metric: str,
    fixed: dict[str, dict],
    field_: dict[str, dict],
    max_regression: float,
    min_field_gain: float,
    min_field_test: int = 1,
) -> GateResult:
    """Pass when no worse on the fixed test set (within the tolerance) and better on the field test set,
    measured on at least ``min_field_test`` field images."""
    fb, fc = fixed["base"][metric], fixed["candidate"][metric]
    gb, gc = field_["base"][metric], field_["candidate"][metric]
    reasons = []
    fixed_ok = fc >= fb - max_regression - 1e-12
    enough = field_["candidate"]["n"] >= min_field_test
    field_ok = gc - gb > min_field_gain + 1e-12 and enough
    reasons.append(
        f"fixed test set ({fixed['candidate']['n']} images): {metric} {fb:.4f} -> {fc:.4f} "
        f"({(fc - fb) * 100:+.2f} points); allowed drop {max_regression * 100:.2f} points: "
        + ("ok" if fixed_ok else "FAIL, the candidate forgot what the base model knew")
    )
    reasons.append(
        f"field test set ({field_['candidate']['n']} images): {metric} {gb:.4f} -> {gc:.4f} "
        f"({(gc - gb) * 100:+.2f} points); needs a gain above {min_field_gain * 100:.2f} points: "
        + (
            "ok"
            if field_ok
            else f"FAIL, fewer than {min_field_test} field test images (--min-field-test): too few to tell a gain "
            "from chance; label more samples on the monitor's Detections page"
            if not enough
            else "FAIL, the candidate is not better on the field"
            if gc <= gb
            else "FAIL, the gain on the field is below the minimum"
        )
    )
    return GateResult(
        passed=fixed_ok and field_ok,
        metric=metric,
        reasons=reasons,
        fixed={"base": fixed["base"], "candidate": fixed["candidate"], "delta": fc - fb, "ok": fixed_ok},
        field={"base": field_["base"], "candidate": field_["candidate"], "delta": gc - gb, "ok": field_ok},
        thresholds={
            "max_regression": max_regression,
            "min_field_gain": min_field_gain,
            "min_field_test": min_field_test,
        },
    )


def gate_markdown(gate: GateResult, title: str) -> str:
    lines = [f"# Evaluation gate: {title}", "", f"**{'PASSED' if gate.passed else 'FAILED'}**", ""]
    lines += [f"- {r}" for r in gate.reasons]
    for name, part in (("Fixed test set", gate.fixed), ("Field test set", gate.field)):
        lines += ["", f"## {name}", "", "| class | base recall | candidate recall | support |", "|---|---|---|---|"]
        for c, b in part["base"]["per_class"].items():
            cand = part["candidate"]["per_class"][c]
            lines.append(f"| {c} | {b['recall']:.3f} | {cand['recall']:.3f} | {b['support']} |")
        lines.append(
            f"| **all** ({gate.metric}) | {part['base'][gate.metric]:.4f} | {part['candidate'][gate.metric]:.4f} | "
            f"{part['base']['n']} |"
        )
    counts = gate.extra.get("counts") or {}
    if counts:
        lines += [
            "",
            "## Data",
            "",
            f"{counts.get('base_images')} base images; {counts.get('field_labels')} field labels: "
            f"{counts.get('field_train')} train (x{counts.get('field_oversample')}), {counts.get('field_val')} val, "
            f"{counts.get('field_test')} field test, {counts.get('field_duplicates')} duplicates of images already "
            f"in the data, {counts.get('field_unknown_class')} of classes the base model does not have",
        ]
    lines.append("")
    lines += [f"- {k}: {v}" for k, v in gate.extra.items() if isinstance(v, (str, int, float))]
    return "\n".join(lines) + "\n"


def gate_plot(path: Path, gate: GateResult) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, (title, part) in zip(axes, (("fixed test set", gate.fixed), ("field test set", gate.field)), strict=True):
        classes = list(part["base"]["per_class"])
        x = np.arange(len(classes))
        base = [part["base"]["per_class"][c]["recall"] for c in classes]
        cand = [part["candidate"]["per_class"][c]["recall"] for c in classes]
        ax.bar(x - 0.2, base, 0.4, label="base")
        ax.bar(x + 0.2, cand, 0.4, label="candidate")
        ax.set_xticks(x, [c.removeprefix("Synthetic_leaf___")[:18] for c in classes], rotation=30, ha="right")
        ax.set_title(f"{title}: {gate.metric} {part['base'][gate.metric]:.3f} -> {part['candidate'][gate.metric]:.3f}")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("recall per class")
    axes[0].legend()
    fig.suptitle(f"evaluation gate {'passed' if gate.passed else 'failed'}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --- the command --------------------------------------------------------------------------------


@dataclass
class RetrainResult:
    run_dir: Path
    version: str
    gate: GateResult
    run_id: str
    published: bool = False


def _since(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        # UTC: the SQLite export compares naive UTC text, so an offset must not be dropped as is.
        return _parse_time(value).astimezone(dt.UTC)
    except ValueError as exc:
        raise RetrainError(f"--since {value!r} is not an ISO 8601 date or date-time (e.g. 2026-06-01)") from exc


def _base_version(registry: Any, name: str, base: Path) -> str | None:
    wanted = str(base.resolve())[-256:]
    for e in registry.entries(name):
        if e.manifest.training_run == wanted:
            return e.version
    return None


def retrain(args: argparse.Namespace, publisher: Any = None, engine: Any = None) -> RetrainResult:
    """The whole pipeline (see the module docstring). ``publisher(topic, payload)`` for the shadow publish;
    ``engine`` to use instead of one made from ``args.db``."""
    from farm_monitor import lineage
    from farm_monitor.db import make_engine, migrate
    from farm_monitor.labels import export_labels
    from shared.manifest import TrustedKeys, load_private_key

    from .disease import train
    from .registry import Registry

    if engine is None:
        engine = make_engine(args.db, writer=True)
        try:
            return retrain(args, publisher, engine)
        finally:
            engine.dispose()
    if args.publish_farm and (not args.base_url or (publisher is None and not args.broker)):
        # Before an hour of training, not after it.
        raise RetrainError("--publish-farm needs --broker and --base-url")
    base: Path = args.base.resolve()
    if not (base / "run.json").is_file() or not (base / "model.pt").is_file() or not (base / "split.csv").is_file():
        raise RetrainError(f"--base {args.base} is not a finished training run (run.json, model.pt, split.csv)")
    if not args.key.is_file():
        raise RetrainError(f"--key {args.key}: no signing key; create one with 'cropwatch keys generate'")
    info = json.loads((base / "run.json").read_text())
    base_config = json.loads((base / "config.json").read_text()) if (base / "config.json").is_file() else {}
    since = _since(args.since)
    version = args.version or dt.datetime.now(dt.UTC).strftime("%Y.%m.%d-%H%M%S")
    run: Path = (args.out or base.parent / f"retrain-{version}").resolve()
    if (run / "run.json").exists():
        raise RetrainError(f"{run} already holds a finished run; choose another --out or --version")
    registry = Registry(args.registry)
    if any(e.version == version for e in registry.entries(args.name)):
        raise RetrainError(
            f"{args.name} {version} is already in the registry {args.registry}; choose another --version"
        )
    base_version = args.base_version or _base_version(registry, args.name, base)
    run.mkdir(parents=True, exist_ok=True)

    migrate(engine)
    run_id = f"{args.name}-{version}"  # versions are unique per model in the registry; folder names are not
    # Taken before the export: a label entered while this run works counts for the next one.
    labels_until = lineage.newest_label_time(engine)
    try:
        export_dir = run / "field_export"
        n = export_labels(engine, export_dir, args.farm or None, since)
        if n == 0:
            raise RetrainError("no labelled samples in the monitor database for these filters; label some first")
        merged = merge(base, export_dir, run, args)
        logger.info("merged data: %s", merged.counts)
    except Exception as exc:
        _record_error(engine, args, run_id, version, base_version, base, run, info, labels_until, exc)
        raise

    size = int(info["image_size"])
    train_argv = [
        "--data", str(run / "data" / "dataset.csv"), "--arch", info["arch"], "--out", str(run),
        "--split", str(run / "split.csv"), "--init", str(base / "model.pt"), "--pretrained", "none",
        "--image-size", str(size), "--epochs", str(args.epochs), "--lr", str(args.lr),
        "--batch-size", str(args.batch_size), "--patience", str(args.patience), "--seed", str(args.seed),
        "--warmup-epochs", "0", "--min-per-class", "1",
        "--label-smoothing", str(base_config.get("label_smoothing", 0.1)),
    ]  # fmt: skip
    if args.threads:
        train_argv += ["--threads", str(args.threads)]
    if not args.train_bn:
        train_argv.append("--freeze-bn")
    if args.quiet:
        train_argv.append("--quiet")
    targs = train.get_args_parser().parse_args(train_argv)
    rc = train.main(targs)
    if rc != 0 or not (run / "run.json").is_file():
        exc = RetrainError(f"fine-tuning failed (train exit {rc}); see the log above and {run}")
        _record_error(engine, args, run_id, version, base_version, base, run, info, labels_until, exc)
        raise exc
    # The resolved retraining config beside the trainer's own config.json.
    atomic_write_text(
        run / "retrain.json",
        json.dumps(
            {
                **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "base": str(base),
                "out": str(run),
                "version": version,
                "base_version": base_version,
                "train_argv": train_argv,
                "counts": merged.counts,
            },
            indent=2,
            default=str,
        )
        + "\n",
    )

    # Evaluate both models on the same two sets, decoded exactly as a device does.
    classes = merged.classes
    split_rows = _read_csv(run / "split.csv")
    fixed_rows = [(run / "data" / r["path"], r["label"]) for r in split_rows if r["split"] == "test"]
    field_rows = [(run / "data" / r["path"], r["label"]) for r in _read_csv(run / "data" / "field_test.csv")]
    results: dict[str, dict[str, dict]] = {"fixed": {}, "field": {}}
    for set_name, rows in (("fixed", fixed_rows), ("field", field_rows)):
        x, y = load_images(rows, size, classes)
        for who, path in (("base", base), ("candidate", run)):
            results[set_name][who] = evaluate_run(path, x, y, classes)
    gate = decide(
        args.metric, results["fixed"], results["field"], args.max_regression, args.min_field_gain,
        args.min_field_test,
    )  # fmt: skip
    candidate_fp = json.loads((run / "run.json").read_text())["dataset_fingerprint"]
    gate.extra = {
        "model": args.name,
        "candidate_version": version,
        "base_version": base_version,
        "base_run": str(base),
        "run": str(run),
        "dataset_fingerprint": candidate_fp,
        "base_dataset_fingerprint": info["dataset_fingerprint"],
        "counts": merged.counts,
    }
    gate_dir = run / "gate"
    gate_dir.mkdir(exist_ok=True)
    atomic_write_text(gate_dir / "report.json", json.dumps(gate.as_dict(), indent=2, default=str) + "\n")
    atomic_write_text(gate_dir / "report.md", gate_markdown(gate, f"{args.name} {version} vs {base_version or base}"))
    gate_plot(gate_dir / "per_class.png", gate)
    for line in gate.reasons:
        logger.info("gate: %s", line)

    from .disease.export import export_run

    gate_note = ("passed" if gate.passed else "failed") + ": " + " | ".join(gate.reasons)
    _manifest, manifest_path = export_run(
        run, name=args.name, version=version, key_path=args.key, int8=not args.no_int8,
        extra_metrics={
            f"field_test_{args.metric}": results["field"]["candidate"][args.metric],
            "field_test_images": float(results["field"]["candidate"]["n"]),
        },
        extra_notes={"base_version": base_version or "", "gate": gate_note[:2000]},
    )  # fmt: skip
    private = load_private_key(args.key)
    entry, _ = registry.import_version(manifest_path, TrustedKeys([private.public_key()]))
    if not gate.passed:
        registry.retire(entry.name, entry.version, "evaluation gate failed: " + " | ".join(gate.reasons))

    status = "candidate" if gate.passed else "gate_failed"
    lineage.record_run(
        engine,
        {
            "run_id": run_id, "model_name": args.name, "model_version": version, "base_model_version": base_version,
            "base_run": str(base), "run_dir": str(run), "dataset_fingerprint": candidate_fp,
            "base_dataset_fingerprint": info["dataset_fingerprint"], "created_at": dt.datetime.now(dt.UTC),
            "labels_until": merged.labels_until, "gate_passed": gate.passed, "gate": gate.as_dict(),
            "counts": merged.counts, "status": status,
            "status_reason": "; ".join(r for r in gate.reasons if "FAIL" in r) or "evaluation gate passed",
        },
        [
            {"sample_msg_id": it.msg_id, "label": it.label, "labelled_by": it.labelled_by,
             "labelled_at": _parse_time(it.labelled_at), "image_sha256": it.sha256, "role": it.role}
            for it in merged.field
        ],
    )  # fmt: skip
    result = RetrainResult(run, version, gate, run_id)
    if gate.passed and args.publish_farm:
        publish_shadow(args, registry, version, publisher)
        lineage.set_status(engine, run_id, "shadow", f"published as shadow to farm {args.publish_farm}")
        result.published = True
    return result


def _record_error(
    engine: Any, args: argparse.Namespace, run_id: str, version: str, base_version: str | None, base: Path,
    run: Path, info: dict[str, Any], labels_until: dt.datetime | None, exc: BaseException,
) -> None:  # fmt: skip
    """An ``error`` run row: the monitor shows why, and the tick waits for labels newer than ``labels_until``."""
    from farm_monitor import lineage

    try:
        lineage.record_run(
            engine,
            {
                "run_id": run_id, "model_name": args.name, "model_version": version,
                "base_model_version": base_version, "base_run": str(base), "run_dir": str(run),
                "dataset_fingerprint": None, "base_dataset_fingerprint": info.get("dataset_fingerprint"),
                "created_at": dt.datetime.now(dt.UTC), "labels_until": labels_until, "gate_passed": False,
                "gate": None, "counts": None, "status": "error",
                "status_reason": f"stopped before the gate: {exc}"[:4000],
            },
            [],
        )  # fmt: skip
    except Exception:  # the original error matters more; say this one in the log
        logger.exception("could not record the failed run %s", run_id)


def publish_shadow(args: argparse.Namespace, registry: Any, version: str, publisher: Any = None) -> None:
    from shared.messages import RolloutPolicy

    from . import rollout

    if not args.base_url or (publisher is None and not args.broker):
        raise RetrainError("--publish-farm needs --broker and --base-url")
    if publisher is None:
        publisher = broker_publisher(args.broker, args.ca_file)
    policy = RolloutPolicy(mode="shadow", percent=args.shadow_percent, devices=args.shadow_devices)
    rollout.publish(
        registry, args.name, version, args.publish_farm, args.base_url, publisher, policy, db_url=args.db,
        by="retrain",
    )  # fmt: skip
    logger.info("published %s %s as shadow to farm %s (%s)", args.name, version, args.publish_farm, policy)


def broker_publisher(url: str, ca_file: str | None = None, password: str | None = None):  # type: ignore[no-untyped-def]
    from .mqtt_publish import publish_retained

    password = password or os.environ.get("CROPWATCH_MQTT_PASSWORD")

    def send(topic: str, payload: bytes) -> None:
        publish_retained(url, topic, payload, ca_file=ca_file, password=password)

    return send


def disease_main(argv: list[str], prog: str) -> int:
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_cli(args, prog)


def run_cli(args: argparse.Namespace, prog: str, publisher: Any = None) -> int:
    """Run and print the gate report; the exit code says passed (0), gate failed (10) or error (1, 2)."""
    from shared.errors import ManifestError

    from .disease.dataset import DatasetError
    from .disease.export import ExportError
    from .mqtt_publish import PublishError
    from .registry import RegistryError

    try:
        result = retrain(args, publisher)
    except (RetrainError, DatasetError, ExportError, RegistryError, ManifestError, PublishError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (FileNotFoundError, ValueError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print((result.run_dir / "gate" / "report.md").read_text())
    verdict = "passed" if result.gate.passed else "failed"
    print(f"{args.name} {result.version}: gate {verdict}; run {result.run_dir}")
    if result.published:
        print(f"published {args.name} {result.version} as shadow to farm {args.publish_farm}")
    return EXIT_OK if result.gate.passed else EXIT_GATE_FAILED
