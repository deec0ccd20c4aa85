"""``cropwatch retrain disease``: field labels from the monitor -> fine-tuned candidate -> evaluation gate.

Steps, each written into the new run folder so the run can be audited later:

1. export the samples agronomists labelled in the monitor (``fleet.labels.export_labels``);
2. merge them with the base run's dataset (:mod:`.retrain_data`: every image once under its sha256,
   so the base run's fixed test set cannot leak into training);
3. hold out part of the new field labels per class (``field_test.csv``) and put the rest into
   train/val (``split.csv``); the base run's train/val/test assignment is kept as it was;
4. fine-tune from the base run's model (``train.main`` with ``--init`` and ``--split``);
5. evaluate base and candidate on the fixed test set and on the field test set, and apply the gate
   (:mod:`.retrain_gate`: ``gate/report.json``, ``gate/report.md``, ``gate/per_class.png``);
6. export ONNX + signed manifest, import it into the registry (retired at once when the gate
   failed, so it cannot be published by mistake), record the run and its labels in the monitor
   database (lineage) and, when the gate passed and a farm is given, publish it as shadow.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from fleet import lineage
from fleet.database import migrate, open_engine
from fleet.labels import export_labels
from fleet.registry import Registry
from shared.fsutil import atomic_write_text

from .retrain_data import Merged, RetrainError, merge, parse_time, read_csv
from .retrain_gate import METRICS, GateResult, decide, evaluate_run, gate_markdown, gate_plot, load_images

if TYPE_CHECKING:  # the type only: importing it would need paho before anything is published
    from fleet.mqtt_publish import Publisher

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_GATE_FAILED = 10


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
        "--max-trust-regression",
        type=float,
        default=0.0,
        help="largest rise of the confidently-wrong rate or the ECE on the field test set the gate accepts",
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


@dataclass
class RetrainResult:
    run_dir: Path
    version: str
    gate: GateResult
    run_id: str
    published: bool = False


@dataclass
class _Plan:
    """What the checks before any work settle: the base run, the new run's version and folder."""

    base: Path
    info: dict[str, Any]
    base_config: dict[str, Any]
    since: dt.datetime | None
    version: str
    run: Path
    run_id: str
    base_version: str | None
    registry: Registry


def _since(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        # UTC: the SQLite export compares naive UTC text, so an offset must not be dropped as is.
        return parse_time(value).astimezone(dt.UTC)
    except ValueError as exc:
        raise RetrainError(f"--since {value!r} is not an ISO 8601 date or date-time (e.g. 2026-06-01)") from exc


def _base_version(registry: Registry, name: str, base: Path) -> str | None:
    wanted = str(base.resolve())[-256:]
    for e in registry.entries(name):
        if e.manifest.training_run == wanted:
            return e.version
    return None


def _plan(args: argparse.Namespace) -> _Plan:
    """Check the inputs (before an hour of training, not after it) and make the run folder."""
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
    # Versions are unique per model in the registry; folder names are not.
    run_id = f"{args.name}-{version}"
    return _Plan(base, info, base_config, since, version, run, run_id, base_version, registry)


def retrain(
    args: argparse.Namespace, publisher: Publisher | None = None, engine: Engine | None = None
) -> RetrainResult:
    """The whole pipeline (see the module docstring). ``publisher(topic, payload)`` for the shadow publish;
    ``engine`` to use instead of one made from ``args.db``."""
    if engine is None:
        engine = open_engine(args.db)
        try:
            return retrain(args, publisher, engine)
        finally:
            engine.dispose()
    if args.publish_farm and (not args.base_url or (publisher is None and not args.broker)):
        # Before an hour of training, not after it.
        raise RetrainError("--publish-farm needs --broker and --base-url")
    plan = _plan(args)
    migrate(engine)
    # Taken before the export: a label entered while this run works counts for the next one.
    labels_until = lineage.newest_label_time(engine)
    try:
        export_dir = plan.run / "field_export"
        n = export_labels(engine, export_dir, args.farm or None, plan.since)
        if n == 0:
            raise RetrainError("no labelled samples in the monitor database for these filters; label some first")
        merged = merge(plan.base, export_dir, plan.run, args)
        logger.info("merged data: %s", merged.counts)
    except Exception as exc:
        _record_error(engine, args, plan, labels_until, exc)
        raise
    try:
        train_argv = _fine_tune(args, plan)
    except RetrainError as exc:
        _record_error(engine, args, plan, labels_until, exc)
        raise
    _write_retrain_json(args, plan, train_argv, merged)
    gate, field_results = _evaluate(args, plan, merged)
    _export_and_register(args, plan, gate, field_results)
    _record_run(engine, args, plan, merged, gate)
    result = RetrainResult(plan.run, plan.version, gate, plan.run_id)
    if gate.passed and args.publish_farm:
        publish_shadow(args, plan.registry, plan.version, publisher)
        lineage.set_status(engine, plan.run_id, "shadow", f"published as shadow to farm {args.publish_farm}")
        result.published = True
    return result


def _fine_tune(args: argparse.Namespace, plan: _Plan) -> list[str]:
    """Fine-tune from the base run's model on the merged data; returns the trainer's argv."""
    from .disease import train

    size = int(plan.info["image_size"])
    run, base = plan.run, plan.base
    train_argv = [
        "--data", str(run / "data" / "dataset.csv"), "--arch", plan.info["arch"], "--out", str(run),
        "--split", str(run / "split.csv"), "--init", str(base / "model.pt"), "--pretrained", "none",
        "--image-size", str(size), "--epochs", str(args.epochs), "--lr", str(args.lr),
        "--batch-size", str(args.batch_size), "--patience", str(args.patience), "--seed", str(args.seed),
        "--warmup-epochs", "0", "--min-per-class", "1",
        "--label-smoothing", str(plan.base_config.get("label_smoothing", 0.1)),
    ]  # fmt: skip
    # The base run's field-conditions recipe (a base from before the recipe had none); the field
    # mix is the retrain's own oversampling, so the trainer's balanced sampler stays off.
    train_argv.append("--no-balanced")
    for flag in ("no_field_background", "no_shadows", "no_perspective", "no_jpeg"):
        if plan.base_config.get(flag, True):
            train_argv.append("--" + flag.replace("_", "-"))
    # The candidate abstains the way its base does: a champion that used energy abstention must
    # not be challenged by a candidate with a trust head it never had (or the other way round).
    if plan.base_config.get("abstain_score"):
        train_argv += ["--abstain-score", str(plan.base_config["abstain_score"])]
    if args.threads:
        train_argv += ["--threads", str(args.threads)]
    if not args.train_bn:
        train_argv.append("--freeze-bn")
    if args.quiet:
        train_argv.append("--quiet")
    rc = train.main(train.get_args_parser().parse_args(train_argv))
    if rc != 0 or not (run / "run.json").is_file():
        raise RetrainError(f"fine-tuning failed (train exit {rc}); see the log above and {run}")
    return train_argv


def _write_retrain_json(args: argparse.Namespace, plan: _Plan, train_argv: list[str], merged: Merged) -> None:
    """The resolved retraining config beside the trainer's own config.json."""
    doc = {
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "base": str(plan.base),
        "out": str(plan.run),
        "version": plan.version,
        "base_version": plan.base_version,
        "train_argv": train_argv,
        "counts": merged.counts,
    }
    atomic_write_text(plan.run / "retrain.json", json.dumps(doc, indent=2, default=str) + "\n")


def _evaluate(args: argparse.Namespace, plan: _Plan, merged: Merged) -> tuple[GateResult, dict[str, Any]]:
    """Both models on the same two sets, decoded exactly as a device does; the gate and its reports.
    Returns the gate and the candidate's field-test metrics."""
    run, size, classes = plan.run, int(plan.info["image_size"]), merged.classes
    fixed_rows = [(run / "data" / r["path"], r["label"]) for r in read_csv(run / "split.csv") if r["split"] == "test"]
    field_rows = [(run / "data" / r["path"], r["label"]) for r in read_csv(run / "data" / "field_test.csv")]
    results: dict[str, dict[str, dict[str, Any]]] = {"fixed": {}, "field": {}}
    for set_name, rows in (("fixed", fixed_rows), ("field", field_rows)):
        x, y = load_images(rows, size, classes)
        for who, path in (("base", plan.base), ("candidate", run)):
            results[set_name][who] = evaluate_run(path, x, y, classes)
    gate = decide(
        args.metric, results["fixed"], results["field"], args.max_regression, args.min_field_gain,
        args.min_field_test, args.max_trust_regression,
    )  # fmt: skip
    gate.extra = {
        "model": args.name,
        "candidate_version": plan.version,
        "base_version": plan.base_version,
        "base_run": str(plan.base),
        "run": str(run),
        "dataset_fingerprint": json.loads((run / "run.json").read_text())["dataset_fingerprint"],
        "base_dataset_fingerprint": plan.info["dataset_fingerprint"],
        "counts": merged.counts,
    }
    gate_dir = run / "gate"
    gate_dir.mkdir(exist_ok=True)
    atomic_write_text(gate_dir / "report.json", json.dumps(gate.as_dict(), indent=2, default=str) + "\n")
    title = f"{args.name} {plan.version} vs {plan.base_version or plan.base}"
    atomic_write_text(gate_dir / "report.md", gate_markdown(gate, title))
    gate_plot(gate_dir / "per_class.png", gate)
    for line in gate.reasons:
        logger.info("gate: %s", line)
    return gate, results["field"]["candidate"]


def _export_and_register(args: argparse.Namespace, plan: _Plan, gate: GateResult, field: dict[str, Any]) -> None:
    """Signed ONNX into the registry; retired at once when the gate failed, so it cannot be published by mistake."""
    from shared.manifest import TrustedKeys, load_private_key

    from .disease.export import export_run

    gate_note = ("passed" if gate.passed else "failed") + ": " + " | ".join(gate.reasons)
    _manifest, manifest_path = export_run(
        plan.run, name=args.name, version=plan.version, key_path=args.key, int8=not args.no_int8,
        extra_metrics={f"field_test_{args.metric}": field[args.metric], "field_test_images": float(field["n"])},
        extra_notes={"base_version": plan.base_version or "", "gate": gate_note[:2000]},
    )  # fmt: skip
    private = load_private_key(args.key)
    entry, _ = plan.registry.import_version(manifest_path, TrustedKeys([private.public_key()]))
    if not gate.passed:
        plan.registry.retire(entry.name, entry.version, "evaluation gate failed: " + " | ".join(gate.reasons))


def _run_row(args: argparse.Namespace, plan: _Plan, labels_until: dt.datetime | None) -> dict[str, Any]:
    """The ``training_runs`` columns every recorded run has; the caller adds the outcome."""
    return {
        "run_id": plan.run_id, "model_name": args.name, "model_version": plan.version,
        "base_model_version": plan.base_version, "base_run": str(plan.base), "run_dir": str(plan.run),
        "base_dataset_fingerprint": plan.info.get("dataset_fingerprint"), "created_at": dt.datetime.now(dt.UTC),
        "labels_until": labels_until,
    }  # fmt: skip


def _record_run(engine: Engine, args: argparse.Namespace, plan: _Plan, merged: Merged, gate: GateResult) -> None:
    """The run and the labels it considered, in the monitor database (lineage)."""
    lineage.record_run(
        engine,
        {
            **_run_row(args, plan, merged.labels_until),
            "dataset_fingerprint": gate.extra["dataset_fingerprint"], "gate_passed": gate.passed,
            "gate": gate.as_dict(), "counts": merged.counts, "status": "candidate" if gate.passed else "gate_failed",
            "status_reason": "; ".join(r for r in gate.reasons if "FAIL" in r) or "evaluation gate passed",
        },
        [
            {"sample_msg_id": it.msg_id, "label": it.label, "labelled_by": it.labelled_by,
             "labelled_at": parse_time(it.labelled_at), "image_sha256": it.sha256, "role": it.role}
            for it in merged.field
        ],
    )  # fmt: skip


def _record_error(
    engine: Engine, args: argparse.Namespace, plan: _Plan, labels_until: dt.datetime | None, exc: BaseException
) -> None:
    """An ``error`` run row: the monitor shows why, and the tick waits for labels newer than ``labels_until``."""
    try:
        lineage.record_run(
            engine,
            {
                **_run_row(args, plan, labels_until),
                "dataset_fingerprint": None, "gate_passed": False, "gate": None, "counts": None, "status": "error",
                "status_reason": f"stopped before the gate: {exc}"[:4000],
            },
            [],
        )  # fmt: skip
    except Exception:  # the original error matters more; say this one in the log
        logger.exception("could not record the failed run %s", plan.run_id)


def publish_shadow(
    args: argparse.Namespace, registry: Registry, version: str, publisher: Publisher | None = None
) -> None:
    from fleet import rollout
    from fleet.mqtt_publish import broker_publisher
    from shared.messages import RolloutPolicy

    if not args.base_url or (publisher is None and not args.broker):
        raise RetrainError("--publish-farm needs --broker and --base-url")
    if publisher is None:
        publisher = broker_publisher(args.broker, args.ca_file, os.environ.get("CROPWATCH_MQTT_PASSWORD"))
    policy = RolloutPolicy(mode="shadow", percent=args.shadow_percent, devices=args.shadow_devices)
    rollout.publish(
        registry, args.name, version, args.publish_farm, args.base_url, publisher, policy, db_url=args.db,
        by="retrain",
    )  # fmt: skip
    logger.info("published %s %s as shadow to farm %s (%s)", args.name, version, args.publish_farm, policy)


def disease_main(argv: list[str], prog: str) -> int:
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_cli(args, prog)


def run_cli(args: argparse.Namespace, prog: str, publisher: Publisher | None = None) -> int:
    """Run and print the gate report; the exit code says passed (0), gate failed (10) or error (1, 2)."""
    from fleet.mqtt_publish import PublishError
    from fleet.registry import RegistryError
    from shared.errors import ManifestError

    from .disease.dataset import DatasetError
    from .disease.export import ExportError

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
