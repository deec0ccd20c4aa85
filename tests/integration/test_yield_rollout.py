"""Over-the-air updates of the yield (season) model: real broker, registry over real HTTP, real ONNX."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleet import rollout
from fleet.mqtt_publish import publish_retained
from fleet.registry import Registry
from shared.manifest import SeasonPreprocessing, TensorData, TensorSpec
from shared.messages import RolloutPolicy
from shared.topics import fleet_model_topic
from tests.edge_models import YIELD_VARIABLES, BuiltModel, _write_and_sign, build_yield_model, yield_graph
from tests.integration.rollout_helpers import (
    build_versions,
    crafted,
    events,
    farm_recorder,
    fleet_doc,
    import_model,
    once_per_msg_id,
    running,
    serving,
)
from tests.services import wait_for

YIELD = "yieldnet"
STEPS = 30


def build_fixed_batch_yield(directory: Path, key_dir: Path, version: str) -> BuiltModel:
    """A yield model that passes its self-test (batch 2) and fails on the agent's single-season runs."""
    graph = yield_graph(STEPS, list(YIELD_VARIABLES))
    for value_info in (graph.graph.input[0], *graph.graph.output):
        value_info.type.tensor_type.shape.dim[0].dim_value = 2
    v = len(YIELD_VARIABLES)
    return _write_and_sign(
        directory, {"fp32": graph}, key_dir, False,
        name=YIELD, version=version, task="yield_forecast",
        inputs=[TensorSpec(name="season", dtype="float32", shape=[2, STEPS, v])],
        outputs=[TensorSpec(name="expected", dtype="float32", shape=[2, 1]),
                 TensorSpec(name="quantiles", dtype="float32", shape=[2, 3])],
        preprocessing=SeasonPreprocessing(variables=list(YIELD_VARIABLES), time_steps=STEPS, target="yield",
                                          target_unit="t/ha"),
        self_test_inputs={"season": TensorData.seeded("float32", [2, STEPS, v], "self-test")},
    )  # fmt: skip


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("yield-models")
    models = build_versions(root, ["1.0.0"])
    keys = root / "keys"
    for v in ("1.0.0", "2.0.0"):
        models[f"y{v}"] = build_yield_model(root / f"y{v}", name=YIELD, version=v, time_steps=STEPS, key_dir=keys)
    models["y3.0.0"] = build_fixed_batch_yield(root / "y3.0.0", keys, "3.0.0")
    return models


def yield_versions(rec, device: str) -> list[str]:  # type: ignore[no-untyped-def]
    # One per msg_id, as ingest stores them (a restarted agent sends its held messages again).
    return [y.model.version for y in once_per_msg_id([y for y in rec.parsed("yield") if y.device_id == device])]


def yield_events(rec, device: str, code: str) -> list:  # type: ignore[no-untyped-def,type-arg]
    return [e for e in events(rec, device, code) if e.details.get("model") == YIELD]


def test_yield_model_over_the_air_trial_reject_and_rollback(  # type: ignore[no-untyped-def]
    tmp_path: Path, mqtt_broker, built
) -> None:
    farm, device = "yieldfarm", "gw-y1"
    registry = Registry(tmp_path / "registry")
    for key in ("y1.0.0", "y2.0.0", "y3.0.0"):
        import_model(registry, built[key])
    doc = fleet_doc(tmp_path, mqtt_broker.port, farm, device, built["1.0.0"])
    doc["yield"] = {
        "enabled": True,
        "model": {"manifest": str(built["y1.0.0"].manifest_path), "threads": 1},
        "season_start": "2026-04-01",
        "interval_s": 3600,
    }
    rec = farm_recorder(mqtt_broker.port, farm)

    def send(topic: str, payload: bytes) -> None:
        publish_retained(mqtt_broker.url, topic, payload)

    with serving(registry) as url, running(doc) as agent:
        runner = agent.yield_runner
        agent.run_yield()
        wait_for(lambda: yield_versions(rec, device) == ["1.0.0"], 10, what="first estimate from the config's model")

        rollout.publish(registry, YIELD, "2.0.0", farm, url, send)
        # The swap triggers a run: the next estimate comes from the new version, on trial.
        wait_for(lambda: yield_versions(rec, device)[-1:] == ["2.0.0"], 20, what="estimate from 2.0.0")
        wait_for(lambda: runner.backend.manifest.version == "2.0.0" and not agent.updater.trials, 20,
                 what="2.0.0 committed")  # fmt: skip
        assert [e.details["state"] for e in yield_events(rec, device, "model_trial")] == ["trial"]
        wait_for(lambda: yield_events(rec, device, "model_active"), 10, what="model_active for the yield model")
        assert agent.pipeline.champion.manifest.version == "1.0.0"  # the disease model is untouched

        # Rejected before anything is fetched; 2.0.0 keeps serving.
        base = rollout.build_desired(registry, YIELD, "2.0.0", farm, url, RolloutPolicy())
        unsigned = built["y2.0.0"].manifest.model_copy(update={"signature": None, "version": "2.5.0"})
        send(fleet_model_topic(farm, YIELD), crafted(base, unsigned))
        wait_for(lambda: [e.details["reason"] for e in yield_events(rec, device, "model_rejected")] == ["unsigned"],
                 20, what="unsigned yield model rejected")  # fmt: skip
        agent.run_yield()
        wait_for(lambda: len(yield_versions(rec, device)) == 3, 10, what="estimate after the rejection")
        assert yield_versions(rec, device)[-1] == "2.0.0"

        # Passes every check and its self-test, then fails its first run on trial: rolled back, and
        # the old model makes that run's estimate.
        rollout.publish(registry, YIELD, "3.0.0", farm, url, send)
        wait_for(lambda: yield_events(rec, device, "model_rolled_back"), 20, what="3.0.0 rolled back")
        assert "failed inference" in yield_events(rec, device, "model_rolled_back")[0].details["reason"]
        wait_for(lambda: len(yield_versions(rec, device)) == 4, 10, what="estimate of the rolled-back run")
        assert yield_versions(rec, device)[-1] == "2.0.0"
        assert runner.backend.manifest.version == "2.0.0" and not agent.updater.trials
        state = json.loads((agent.cfg.data_dir / "models" / YIELD / "state.json").read_text())
        assert state["active"] == "2.0.0" and "3.0.0" in state["failed"] and state["trial"] is None

    # A restart serves the committed slot version, not the config's 1.0.0, and does not retry 3.0.0.
    with running(doc) as agent:
        assert agent.yield_runner.backend.manifest.version == "2.0.0"
        wait_for(lambda: agent.updater.outcome.get(YIELD), 20, what="retained 3.0.0 message seen again")
        assert agent.updater.outcome[YIELD][1] == "current"
        agent.run_yield()
        wait_for(lambda: len(yield_versions(rec, device)) == 5, 10, what="estimate after restart")
        assert yield_versions(rec, device)[-1] == "2.0.0"
    rec.close()
