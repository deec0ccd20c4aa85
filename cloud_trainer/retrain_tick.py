"""``cropwatch retrain tick --config retrain.toml``: one decision per run, for a cron job or systemd timer.

Each tick does at most one thing and says what it decided and why (a line per decision, and the
whole decision as JSON with ``--json``):

1. a shadow run is live (a retraining run has status ``shadow``): score it on the
   detections since it was published (:func:`fleet.shadow.shadow_report`). When the
   challenger beats the champion by ``promotion.margin`` on at least ``promotion.min_labelled``
   labelled detections, promote it (``fleet.rollout.promote``); when it loses by the margin,
   end the shadow run; otherwise wait. No retraining while a challenger is being scored. A shadow
   run promoted by hand becomes ``promoted``; the newest run left a gate-passed ``candidate`` is
   adopted when published by hand, else published as shadow.
2. otherwise retrain (``cropwatch retrain disease``) when at least ``retrain.min_new_labels`` labels
   were entered since the last run, or when ``retrain.interval_hours`` have passed since it and
   there is at least one new label. The base is the run that made the farm's current champion (rollout
   history), else the newest promoted run, else ``retrain.base_run``.

Exit status: 0 when the tick decided (including "nothing to do" and "gate failed"), 1 on an error,
2 on a bad config.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from sqlalchemy import Engine

from fleet import history, lineage, rollout
from fleet.registry import Registry
from fleet.shadow import shadow_report

if TYPE_CHECKING:  # the type only: importing it would need paho before anything is published
    from fleet.mqtt_publish import Publisher

logger = logging.getLogger(__name__)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatabaseSection(_Model):
    url: str = Field(..., description="the monitor database (sqlite:///... or postgresql+psycopg://...)")
    password: SecretStr | None = None


class RegistrySection(_Model):
    path: Path = Field(Path("var/registry"), description="registry folder")
    base_url: str | None = Field(None, description="where agents download from (needed to publish or promote)")


class BrokerSection(_Model):
    url: str | None = Field(None, description="mqtt://[user@]host:1883 or mqtts://... (needed to publish)")
    ca_file: str | None = None
    password: SecretStr | None = None


class RetrainSection(_Model):
    model_name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")] = "leaf-disease"
    base_run: Path = Field(..., description="the first base run; later the newest promoted run is the base")
    runs_dir: Path = Field(Path("runs"), description="new runs go to RUNS_DIR/retrain-VERSION")
    key: Path = Path("keys/cropwatch-signing.key")
    farms: list[str] = Field(default_factory=list, description="only labels of these farms (empty: all)")
    min_new_labels: Annotated[int, Field(ge=1)] = 50
    interval_hours: Annotated[float, Field(ge=0)] = Field(168.0, description="0: only the label count triggers")
    epochs: Annotated[int, Field(ge=1)] = 6
    lr: Annotated[float, Field(gt=0)] = 3e-4
    batch_size: Annotated[int, Field(ge=1)] = 16
    threads: Annotated[int, Field(ge=1)] | None = None
    field_test_frac: Annotated[float, Field(gt=0, lt=1)] = 0.3
    field_val_frac: Annotated[float, Field(ge=0, lt=1)] = 0.2
    field_oversample: Annotated[int, Field(ge=1)] = 1
    metric: str = Field("accuracy", pattern="^(accuracy|macro_f1)$")
    max_regression: Annotated[float, Field(ge=0, le=1)] = 0.01
    min_field_gain: Annotated[float, Field(ge=0, le=1)] = 0.0
    min_field_test: Annotated[int, Field(ge=1)] = Field(5, description="fewer field test images fail the gate")
    int8: bool = True


class ShadowSection(_Model):
    farm: str | None = Field(None, description="publish candidates that pass the gate as shadow to this farm")
    devices: list[str] | None = Field(None, description="the devices that run the challenger (default: by percent)")
    percent: Annotated[float, Field(ge=0, le=100)] = 100.0


class PromotionSection(_Model):
    enabled: bool = True
    margin: Annotated[float, Field(ge=0, le=1)] = Field(
        0.05, description="challenger accuracy minus champion accuracy on labelled detections"
    )
    min_labelled: Annotated[int, Field(ge=1)] = 30
    end_losing_shadow: bool = Field(True, description="end the shadow run when the challenger loses by the margin")


class RetrainConfig(_Model):
    """``retrain.toml``."""

    database: DatabaseSection
    registry: RegistrySection = Field(default_factory=RegistrySection)
    broker: BrokerSection = Field(default_factory=BrokerSection)
    retrain: RetrainSection
    shadow: ShadowSection = Field(default_factory=ShadowSection)
    promotion: PromotionSection = Field(default_factory=PromotionSection)

    @model_validator(mode="after")
    def _publishing_needs_broker_and_base_url(self) -> RetrainConfig:
        # Checked here, not after an hour of training: a shadow farm means publishing.
        if self.shadow.farm and not (self.broker.url and self.registry.base_url):
            raise ValueError(
                f"shadow.farm = {self.shadow.farm!r} publishes candidates: set broker.url and registry.base_url too"
            )
        return self


def _publisher(cfg: RetrainConfig) -> Publisher | None:
    from fleet.mqtt_publish import broker_publisher

    if not cfg.broker.url:
        return None
    secret = cfg.broker.password
    password = secret.get_secret_value() if secret else os.environ.get("CROPWATCH_MQTT_PASSWORD")
    return broker_publisher(cfg.broker.url, cfg.broker.ca_file, password)


def check_promotion(
    cfg: RetrainConfig, engine: Engine, run: dict[str, Any], publisher: Publisher | None, act: bool
) -> dict[str, Any]:
    """Score the live shadow run and promote, end or wait."""
    name, farm, p = cfg.retrain.model_name, cfg.shadow.farm, cfg.promotion
    if not farm:
        return {"action": "none", "why": "shadow.farm is not set; cannot score a shadow run"}
    records = history.read_history(Registry(cfg.registry.path), farm, name)
    if records:
        live = history.current_shadow(records)
        if live is None or live["version"] != run["model_version"]:
            champion = history.current_champion(records)
            if champion is not None and champion["version"] == run["model_version"]:
                # `cropwatch models promote` ends the shadow run it promotes: promoted, not superseded.
                why = f"{run['model_version']} was promoted on farm {farm} (by hand)"
                if act:
                    _mark_promoted(engine, name, run, why)
                return {"action": "none", "why": why}
            why = f"the shadow run of {run['model_version']} is no longer live on farm {farm} (ended or replaced)"
            if act:
                lineage.set_status(engine, run["run_id"], "superseded", why)
            return {"action": "none", "why": why}
    scores = shadow_report(engine, farm, name, since=run["status_at"], challenger=run["model_version"])
    labelled = sum(s.labelled for s in scores)
    compared = sum(s.compared for s in scores)
    champ = sum(s.champion_correct for s in scores)
    chall = sum(s.challenger_correct for s in scores)
    margin = (chall - champ) / labelled if labelled else None
    out: dict[str, Any] = {
        "challenger": run["model_version"],
        "champions": sorted({s.champion_version for s in scores}),
        "compared": compared,
        "agreement": sum(s.agreed for s in scores) / compared if compared else None,
        "labelled": labelled,
        "champion_accuracy": champ / labelled if labelled else None,
        "challenger_accuracy": chall / labelled if labelled else None,
        "margin": margin,
    }
    if not p.enabled:
        return {**out, "action": "none", "why": "promotion.enabled is false"}
    if labelled < p.min_labelled:
        return {**out, "action": "wait", "why": f"{labelled} labelled detections of {p.min_labelled} needed"}
    assert margin is not None
    if margin >= p.margin:
        why = (
            f"challenger {run['model_version']} right on {chall}/{labelled} labelled detections, champion on "
            f"{champ}/{labelled}: margin {margin:+.3f} >= {p.margin}"
        )
        if act:
            if publisher is None:
                raise RuntimeError("promotion needs [broker] url to publish the new champion")
            rollout.promote(
                Registry(cfg.registry.path), name, farm, publisher, cfg.registry.base_url,
                db_url=cfg.database.url, by="retrain tick",
            )  # fmt: skip
            _mark_promoted(engine, name, run, why)
        return {**out, "action": "promote", "why": why}
    if margin <= -p.margin and p.end_losing_shadow:
        why = f"challenger loses: margin {margin:+.3f} <= -{p.margin} on {labelled} labelled detections"
        if act:
            if publisher is None:
                raise RuntimeError("ending a shadow run needs [broker] url")
            rollout.end_shadow(
                Registry(cfg.registry.path), name, farm, publisher, reason="challenger lost",
                db_url=cfg.database.url, by="retrain tick",
            )  # fmt: skip
            lineage.set_status(engine, run["run_id"], "gate_failed", "shadow run lost: " + why)
        return {**out, "action": "end_shadow", "why": why}
    return {**out, "action": "wait", "why": f"margin {margin:+.3f} within +-{p.margin}; keep scoring"}


def _mark_promoted(engine: Engine, name: str, run: dict[str, Any], why: str) -> None:
    for old in lineage.runs(engine, name):
        if old["status"] == "promoted" and old["run_id"] != run["run_id"]:
            lineage.set_status(engine, old["run_id"], "superseded", f"{run['model_version']} was promoted")
    lineage.set_status(engine, run["run_id"], "promoted", why)


def champion_run(cfg: RetrainConfig, engine: Engine) -> dict[str, Any] | None:
    """The run that made the farm's current champion (rollout history), else the newest promoted run.

    None when the champion was not made by retraining (the first base model): ``retrain.base_run``.
    """
    name = cfg.retrain.model_name
    if cfg.shadow.farm:
        champion = history.current_champion(history.read_history(Registry(cfg.registry.path), cfg.shadow.farm, name))
        if champion is not None:
            # The history is what devices run, whatever the lineage status says (promoted by hand, rolled back).
            return lineage.run_for_version(engine, name, champion["version"])
    return lineage.latest_run(engine, name, ("promoted",))


def _adopt_candidate(
    cfg: RetrainConfig, engine: Engine, run: dict[str, Any], publisher: Publisher | None, act: bool
) -> dict[str, Any] | None:
    """A ``candidate`` run: published as shadow by hand (``cropwatch models publish --mode shadow``) is scored
    too; published as champion by hand is promoted; a gate-passed one not published yet (a failed publish,
    a run by hand without ``--publish-farm``) is published as shadow now. Returns the decision or None."""
    farm, name = cfg.shadow.farm or "", run["model_name"]
    registry = Registry(cfg.registry.path)
    records = history.read_history(registry, farm, name)
    live = history.current_shadow(records)
    if live is not None and live["version"] == run["model_version"]:
        at = dt.datetime.fromisoformat(live["published_at"])
        reason = f"published as shadow to farm {farm} (by hand)"
        if act:
            lineage.set_status(engine, run["run_id"], "shadow", reason, at=at)
        run.update(status="shadow", status_at=at if at.tzinfo else at.replace(tzinfo=dt.UTC), status_reason=reason)
        return None
    champion = history.current_champion(records)
    if champion is not None and champion["version"] == run["model_version"]:
        why = f"{run['model_version']} was published as champion on farm {farm} (by hand)"
        if act:
            _mark_promoted(engine, name, run, why)
        return {"action": "none", "why": why}
    if not run["gate_passed"] or live is not None:
        return None  # another challenger is live (not ours): leave the candidate alone
    why = f"candidate {run['model_version']} passed the gate but was not published; publishing it as shadow"
    if act:
        from shared.messages import RolloutPolicy

        if publisher is None:
            raise RuntimeError("publishing a shadow run needs [broker] url")
        policy = RolloutPolicy(mode="shadow", percent=cfg.shadow.percent, devices=cfg.shadow.devices)
        rollout.publish(
            registry, name, run["model_version"], farm, cfg.registry.base_url or "", publisher, policy,
            db_url=cfg.database.url, by="retrain tick",
        )  # fmt: skip
        lineage.set_status(engine, run["run_id"], "shadow", f"published as shadow to farm {farm} (retrain tick)")
    return {"action": "publish_shadow", "why": why}


def check_retrain(cfg: RetrainConfig, engine: Engine, now: dt.datetime) -> dict[str, Any]:
    r = cfg.retrain
    last = lineage.latest_run(engine, r.model_name)
    since = last["labels_until"] if last else None
    new = lineage.labels_since(engine, since, r.farms or None)
    champion = champion_run(cfg, engine)
    base = Path(champion["run_dir"]) if champion else r.base_run
    out: dict[str, Any] = {
        "new_labels": new,
        "since": since.isoformat() if since else None,
        "last_run": last["run_id"] if last else None,
        "base_run": str(base),
    }
    if new >= r.min_new_labels:
        return {**out, "action": "retrain", "why": f"{new} new labels >= {r.min_new_labels}"}
    if r.interval_hours > 0 and new > 0:
        age_h = (now - last["created_at"]).total_seconds() / 3600 if last else None
        if age_h is None or age_h >= r.interval_hours:
            when = "no run yet" if age_h is None else f"last run {age_h:.1f} h ago"
            return {**out, "action": "retrain", "why": f"schedule: {when} (every {r.interval_hours:g} h), {new} new"}
    return {**out, "action": "none", "why": f"{new} new labels < {r.min_new_labels} and the schedule is not due"}


def retrain_args(cfg: RetrainConfig, base: Path, version: str) -> argparse.Namespace:
    from .retrain import build_parser

    r, s = cfg.retrain, cfg.shadow
    argv = [
        "--db", cfg.database.url, "--base", str(base), "--out", str(r.runs_dir / f"retrain-{version}"),
        "--name", r.model_name, "--version", version, "--key", str(r.key), "--registry", str(cfg.registry.path),
        "--epochs", str(r.epochs), "--lr", str(r.lr), "--batch-size", str(r.batch_size),
        "--field-test-frac", str(r.field_test_frac), "--field-val-frac", str(r.field_val_frac),
        "--field-oversample", str(r.field_oversample), "--metric", r.metric,
        "--max-regression", str(r.max_regression), "--min-field-gain", str(r.min_field_gain),
        "--min-field-test", str(r.min_field_test), "--quiet",
    ]  # fmt: skip
    for f in r.farms:
        argv += ["--farm", f]
    if r.threads:
        argv += ["--threads", str(r.threads)]
    if not r.int8:
        argv.append("--no-int8")
    if s.farm:
        argv += ["--publish-farm", s.farm, "--shadow-percent", str(s.percent)]
        if s.devices:
            argv += ["--shadow-devices", *s.devices]
        if cfg.broker.url:
            argv += ["--broker", cfg.broker.url]
        if cfg.broker.ca_file:
            argv += ["--ca-file", cfg.broker.ca_file]
        if cfg.registry.base_url:
            argv += ["--base-url", cfg.registry.base_url]
    return build_parser("cropwatch retrain disease").parse_args(argv)


def tick(
    cfg: RetrainConfig, dry_run: bool = False, publisher: Publisher | None = None, now: dt.datetime | None = None
) -> dict[str, Any]:
    """Decide (and unless ``dry_run`` act); returns the decision document."""
    from fleet.database import migrate, open_engine

    now = now or dt.datetime.now(dt.UTC)
    publisher = publisher or _publisher(cfg)
    password = cfg.database.password.get_secret_value() if cfg.database.password else None
    engine = open_engine(cfg.database.url, password)
    try:
        migrate(engine)
        decision: dict[str, Any] = {"at": now.isoformat(), "model": cfg.retrain.model_name, "dry_run": dry_run}
        name = cfg.retrain.model_name
        # A live shadow run first: a newer run (by hand, gate failed) must not hide it.
        live = lineage.latest_run(engine, name, ("shadow",))
        newest = lineage.latest_run(engine, name)
        if live is None and newest is not None and newest["status"] == "candidate" and cfg.shadow.farm:
            adopted = _adopt_candidate(cfg, engine, newest, publisher, act=not dry_run)
            if adopted is not None:
                decision["promotion"] = adopted
                decision["retrain"] = {"action": "none", "why": adopted["why"]}
                return decision
            if newest["status"] == "shadow":
                live = newest
        if live is not None:
            decision["promotion"] = check_promotion(cfg, engine, live, publisher, act=not dry_run)
            decision["retrain"] = {"action": "none", "why": f"shadow run {live['run_id']} is being scored"}
            return decision
        decision["promotion"] = {"action": "none", "why": "no shadow run is live"}
        decision["retrain"] = check_retrain(cfg, engine, now)
        if decision["retrain"]["action"] == "retrain" and not dry_run:
            from .retrain import retrain

            version = now.strftime("%Y.%m.%d-%H%M%S")
            args = retrain_args(cfg, Path(decision["retrain"]["base_run"]), version)
            champion = champion_run(cfg, engine)
            if champion:
                args.base_version = champion["model_version"]
            result = retrain(args, publisher, engine)
            decision["retrain"].update(
                version=result.version, run=str(result.run_dir), gate_passed=result.gate.passed,
                gate_reasons=result.gate.reasons, published_as_shadow=result.published,
            )  # fmt: skip
        return decision
    finally:
        engine.dispose()


def describe(decision: dict[str, Any]) -> str:
    p, r = decision["promotion"], decision["retrain"]
    lines = [f"promotion: {p['action']} ({p['why']})", f"retrain: {r['action']} ({r['why']})"]
    if "gate_passed" in r:
        lines.append(f"  candidate {r['version']}: gate {'passed' if r['gate_passed'] else 'failed'}")
        lines += [f"    {x}" for x in r["gate_reasons"]]
        if r["published_as_shadow"]:
            lines.append("  published as shadow")
    return "\n".join(lines)


def main(argv: list[str], prog: str = "cropwatch retrain tick") -> int:
    from shared.config import command_config

    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", "-c", required=True, help="retrain.toml")
    parser.add_argument("--check-config", action="store_true", help="print the resolved config (secrets redacted)")
    parser.add_argument("--dry-run", action="store_true", help="decide and report, change nothing")
    parser.add_argument("--json", action="store_true", help="print the decision as JSON")
    args = parser.parse_args(argv)
    cfg = command_config(RetrainConfig, args.config, prog, args.check_config)
    if isinstance(cfg, int):
        return cfg
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        decision = tick(cfg, dry_run=args.dry_run)
    except Exception as exc:  # a timer job: say what failed in one line, the traceback goes to the log
        logger.exception("retrain tick failed")
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(decision, indent=2, default=str) if args.json else describe(decision))
    return 0
