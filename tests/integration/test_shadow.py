"""Shadow mode over a real broker, the registry served over real HTTP and real ONNX models.

The challenger is the champion's classifier with its labels in reverse order: it picks the same
output index, so its top label differs from the champion's on every image, which makes a
disagreement (and the sample it triggers) certain without tuning images.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleet import models_cli, rollout
from fleet.mqtt_publish import publish_retained
from fleet.registry import Registry
from shared.messages import RolloutPolicy
from shared.topics import fleet_model_topic, fleet_shadow_topic
from tests.edge_models import LEAF_LABELS, build_classifier
from tests.integration.ingest_helpers import config as ingest_config, ingest_thread
from tests.integration.rollout_helpers import (
    NAME,
    build_fixed_batch,
    build_versions,
    crafted,
    detect,
    events,
    farm_recorder,
    fleet_doc,
    import_model,
    registry_with,
    running,
    serving,
)
from tests.services import wait_for

CHALLENGER = "3.0.0"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("shadow-models")
    models = build_versions(root, ["1.0.0"])
    models[CHALLENGER] = build_classifier(
        root / CHALLENGER,
        name=NAME,
        version=CHALLENGER,
        labels=list(reversed(LEAF_LABELS)),
        key_dir=root / "keys",
        temperature=2.0,  # other bytes than 1.0.0's, for the digest attack
    )
    return models


@pytest.fixture
def registry(tmp_path: Path, built) -> Registry:  # type: ignore[no-untyped-def]
    return registry_with(tmp_path, built.values())


def shadow_events(rec, device: str, code: str) -> list:  # type: ignore[no-untyped-def,type-arg]
    return [e for e in events(rec, device, code) if e.details.get("role") == "shadow"]


def shadow_version(agent) -> str | None:  # type: ignore[no-untyped-def]
    shadow = agent.pipeline.shadow
    return shadow.manifest.version if shadow is not None else None


def last_status(rec, device: str):  # type: ignore[no-untyped-def]
    statuses = [s for s in rec.parsed("status", live_only=False) if s.device_id == device and s.state == "online"]
    return statuses[-1] if statuses else None


def roles(rec, device: str) -> set[tuple[str, str, str]]:  # type: ignore[no-untyped-def]
    st = last_status(rec, device)
    return {(m.role, m.version, m.state) for m in st.models} if st else set()


def db_desired(url: str, farm: str) -> dict[tuple[str, str], tuple[str | None, str | None]]:
    """(device, role) -> (desired_version, desired_by) for every device_models row of the farm."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT device_id, role, desired_version, desired_by FROM device_models WHERE farm_id = :f"),
                {"f": farm},
            ).all()
    finally:
        engine.dispose()
    return {(r[0], r[1]): (r[2], r[3]) for r in rows}


def test_shadow_run_restart_end_and_promote(  # type: ignore[no-untyped-def]
    tmp_path: Path, own_broker, registry: Registry, built, sqlite_url: str, capsys
) -> None:
    # A private broker: ingest's persistent session would otherwise stay in the shared broker's
    # subscription group after this test and take part of a later test's messages.
    mqtt_broker = own_broker
    farm = "shadowfarm"
    fleet = ["gw-s1", "gw-s2", "gw-s3"]
    docs = {d: fleet_doc(tmp_path, mqtt_broker.port, farm, d, built["1.0.0"]) for d in fleet}
    # Only disagreements make samples here (confidence 0 is never "low").
    docs["gw-s1"]["samples"] = {"enabled": True, "confidence_below": 0.0}
    rec = farm_recorder(mqtt_broker.port, farm)
    base = ["--registry", str(registry.root)]
    # --db: the monitor database records who wants which version where (device_models.desired_*).
    broker = ["--farm", farm, "--broker", mqtt_broker.url, "--db", sqlite_url]
    with (
        serving(registry) as url,
        ingest_thread(ingest_config(sqlite_url, mqtt_broker)),
        running(docs["gw-s2"]) as b,
        running(docs["gw-s3"]) as c,
    ):
        rollout.publish(registry, NAME, "1.0.0", farm, url, lambda t, p: publish_retained(mqtt_broker.url, t, p))
        with running(docs["gw-s1"]) as a:
            wait_for(lambda: len(db_desired(sqlite_url, farm)) == 3, 20, what="the fleet known to the monitor")
            before = detect(rec, docs["gw-s1"], 0)
            assert before.shadow is None and before.model.version == "1.0.0"
            assert models_cli.main([*base, "publish", NAME, CHALLENGER, *broker, "--base-url", url,
                                    "--mode", "shadow", "--devices", "gw-s1"]) == 0  # fmt: skip
            published = rollout.read_history(registry, farm, NAME)[-1]
            assert published["rollout"]["mode"] == "shadow" and published["version"] == CHALLENGER
            desired = db_desired(sqlite_url, farm)
            assert desired[("gw-s1", "shadow")][0] == CHALLENGER and desired[("gw-s1", "shadow")][1].startswith("cli")
            assert ("gw-s2", "shadow") not in desired and ("gw-s3", "shadow") not in desired
            wait_for(lambda: a.updater.shadow_outcome.get(NAME, ("", ""))[1] == "active", 20, what="shadow loaded")
            for ag in (b, c):
                wait_for(lambda ag=ag: ag.updater.shadow_outcome.get(NAME, ("", ""))[1] == "not_selected", 20,
                         what="others saw the shadow message")  # fmt: skip
                assert ag.pipeline.shadow is None
            # The champion's retained message was not replaced by the challenger's.
            assert all(ag.pipeline.champion.manifest.version == "1.0.0" for ag in (a, b, c))

            det = detect(rec, docs["gw-s1"], 1)
            assert (det.model.version, det.label) == ("1.0.0", before.label)
            assert det.shadow is not None and det.shadow.model.version == CHALLENGER
            assert det.shadow.model.sha256 == built[CHALLENGER].manifest.file("fp32").sha256
            assert det.shadow.top_k[0].label != det.label
            wait_for(lambda: any(s.detection_msg_id == det.msg_id for s in rec.parsed("sample")), 10,
                     what="a sample of the disagreement")  # fmt: skip
            [sample] = [s for s in rec.parsed("sample") if s.detection_msg_id == det.msg_id]
            assert sample.reason == "shadow_disagreement" and sample.predicted_label == det.label
            assert detect(rec, docs["gw-s2"], 2).shadow is None

            wait_for(lambda: ("shadow", CHALLENGER, "active") in roles(rec, "gw-s1"), 10, what="status role=shadow")
            assert ("champion", "1.0.0", "active") in roles(rec, "gw-s1")
            assert [e.details["state"] for e in shadow_events(rec, "gw-s1", "model_active")] == ["active"]

            def table() -> list[dict]:  # type: ignore[type-arg]
                capsys.readouterr()
                assert models_cli.main([*base, "status", NAME, "--farm", farm, "--db", sqlite_url, "--json"]) == 0
                return json.loads(capsys.readouterr().out)

            wait_for(lambda: [(r["device"], r["role"], r["desired"], r["active"]) for r in table()] == [
                ("gw-s1", "champion", "1.0.0", "1.0.0"), ("gw-s1", "shadow", CHALLENGER, CHALLENGER),
                ("gw-s2", "champion", "1.0.0", "1.0.0"), ("gw-s3", "champion", "1.0.0", "1.0.0"),
            ], 20, what="rollout table with the shadow row")  # fmt: skip

        # A restart keeps the challenger from its slot: loaded at boot, not downloaded again.
        with running(docs["gw-s1"]) as a:
            assert shadow_version(a) == CHALLENGER
            wait_for(lambda: a.updater.shadow_outcome.get(NAME, ("", ""))[1] == "current", 20,
                     what="retained shadow message seen again")  # fmt: skip
            assert len(shadow_events(rec, "gw-s1", "model_downloading")) == 1
            assert detect(rec, docs["gw-s1"], 3).shadow.model.version == CHALLENGER

            assert models_cli.main([*base, "end-shadow", NAME, *broker]) == 0
            wait_for(lambda: a.pipeline.shadow is None, 20, what="challenger unloaded")
            wait_for(lambda: shadow_events(rec, "gw-s1", "model_unloaded"), 10, what="model_unloaded event")
            assert shadow_events(rec, "gw-s1", "model_unloaded")[0].details["reason"] == "shadow_ended"
            assert db_desired(sqlite_url, farm).get(("gw-s1", "shadow"), (None,))[0] is None
            # Ingest drops the ended run's row once a heartbeat no longer lists the challenger.
            wait_for(lambda: ("gw-s1", "shadow") not in db_desired(sqlite_url, farm), 20, what="stale shadow row gone")
            assert detect(rec, docs["gw-s1"], 4).shadow is None
            assert not (a.cfg.data_dir / "shadow" / NAME / "versions" / CHALLENGER).exists()

            # A new shadow run, then promotion: the challenger becomes everyone's champion.
            assert models_cli.main([*base, "publish", NAME, CHALLENGER, *broker, "--base-url", url,
                                    "--mode", "shadow", "--devices", "gw-s1"]) == 0  # fmt: skip
            wait_for(lambda: shadow_version(a) == CHALLENGER, 20, what="second shadow run")
            assert models_cli.main([*base, "promote", NAME, *broker]) == 0
            for ag in (a, b, c):
                wait_for(lambda ag=ag: ag.pipeline.champion.manifest.version == CHALLENGER and ag.updater.trial is None,
                         30, what="challenger promoted to champion")  # fmt: skip
            wait_for(lambda: a.pipeline.shadow is None, 20, what="shadow run ended by the promotion")
            desired = db_desired(sqlite_url, farm)
            assert {d: desired[(d, "champion")][0] for d in fleet} == dict.fromkeys(fleet, CHALLENGER)
            assert desired.get(("gw-s1", "shadow"), (None,))[0] is None
            for i, d in enumerate(fleet):
                det = detect(rec, docs[d], 10 + i)
                assert det.model.version == CHALLENGER and det.shadow is None
    history = rollout.read_history(registry, farm, NAME)
    assert [r["action"] for r in history][-2:] == ["promote", "end_shadow"]
    assert history[-2]["version"] == CHALLENGER and history[-2]["rollout"]["mode"] == "active"
    assert rollout.current_shadow(history) is None
    rec.close()


def test_bad_challengers_are_rejected_and_the_champion_keeps_serving(  # type: ignore[no-untyped-def]
    tmp_path: Path, mqtt_broker, registry: Registry, built
) -> None:
    farm, device = "shadowattack", "gw-sa"
    v1, ch = built["1.0.0"], built[CHALLENGER]
    # Passes its self-test (batch of 2) and fails on the single images the agent runs.
    broken = build_fixed_batch(tmp_path / "broken", v1.private_key.parent, "4.0.0")
    import_model(registry, broken)
    rec = farm_recorder(mqtt_broker.port, farm)
    doc = fleet_doc(tmp_path, mqtt_broker.port, farm, device, v1)
    shadow_topic, model_topic = fleet_shadow_topic(farm, NAME), fleet_model_topic(farm, NAME)
    policy = RolloutPolicy(mode="shadow")
    with serving(registry) as url, running(doc) as agent:
        good = rollout.build_desired(registry, NAME, CHALLENGER, farm, url, policy)
        tampered_files = [a.model_copy(update={"url": a.url.replace(CHALLENGER, "1.0.0")}) for a in good.artifacts]
        attacks = {
            "unsigned": (shadow_topic, crafted(good, ch.manifest.model_copy(update={"signature": None}))),
            # The challenger's manifest, with the champion's bytes behind its URL.
            "digest_mismatch": (shadow_topic, crafted(good, ch.manifest, tampered_files)),
            # A challenger on the champion's topic, and a champion on the shadow topic.
            "wrong_topic": (model_topic, good.to_json()),
        }
        for i, (reason, (topic, payload)) in enumerate(attacks.items()):
            publish_retained(mqtt_broker.url, topic, payload)
            wait_for(lambda r=reason: any(e.details.get("reason") == r for e in events(rec, device, "model_rejected")),
                     20, what=f"{reason} rejected")  # fmt: skip
            det = detect(rec, doc, i)
            assert (det.model.version, det.shadow) == ("1.0.0", None), reason
        publish_retained(mqtt_broker.url, model_topic, b"")  # clear the wrong-topic message again
        active = rollout.build_desired(registry, NAME, CHALLENGER, farm, url, RolloutPolicy())
        publish_retained(mqtt_broker.url, shadow_topic, active.to_json())
        wrong = lambda: [e for e in events(rec, device, "model_rejected") if e.details["reason"] == "wrong_topic"]  # noqa: E731
        wait_for(lambda: len(wrong()) == 2, 20, what="an active message on the shadow topic rejected")
        rejected = {e.details["reason"] for e in events(rec, device, "model_rejected")}
        assert rejected == {"unsigned", "digest_mismatch", "wrong_topic"}
        assert agent.pipeline.shadow is None and agent.pipeline.champion.manifest.version == "1.0.0"

        # A challenger that loads and then fails inference is unloaded; the champion's result stands.
        rollout.publish(registry, NAME, "4.0.0", farm, url, lambda t, p: publish_retained(mqtt_broker.url, t, p),
                        policy)  # fmt: skip
        wait_for(lambda: shadow_version(agent) == "4.0.0", 20, what="broken challenger loaded")
        det = detect(rec, doc, 10)
        assert det.model.version == "1.0.0" and det.shadow is None
        wait_for(lambda: shadow_events(rec, device, "model_rolled_back"), 10, what="failing shadow unloaded")
        assert agent.pipeline.shadow is None and agent.errors.get("shadow_failed") == 1
        state = json.loads((agent.cfg.data_dir / "shadow" / NAME / "state.json").read_text())
        assert state["active"] is None and "4.0.0" in state["failed"]
        assert detect(rec, doc, 11).model.version == "1.0.0"
        assert agent.pipeline.champion.manifest.version == "1.0.0" and agent.updater.trial is None
    rec.close()


def test_a_run_ended_while_the_device_was_offline_is_unloaded_after_the_confirm_window(  # type: ignore[no-untyped-def]
    tmp_path: Path, mqtt_broker, registry: Registry, built
) -> None:
    farm, device = "shadowoffline", "gw-so"
    doc = fleet_doc(tmp_path, mqtt_broker.port, farm, device, built["1.0.0"], shadow_confirm_s=1.0)
    rec = farm_recorder(mqtt_broker.port, farm)

    def send(topic: str, payload: bytes) -> None:
        publish_retained(mqtt_broker.url, topic, payload)

    with serving(registry) as url:
        with running(doc) as agent:
            rollout.publish(registry, NAME, CHALLENGER, farm, url, send, RolloutPolicy(mode="shadow"))
            wait_for(lambda: shadow_version(agent) == CHALLENGER, 20, what="challenger loaded")
        # The run ends while the device is down: the empty retained payload just deletes the message.
        # (A device whose broker session survived gets it queued; this one comes back with a new session.)
        rollout.end_shadow(registry, NAME, farm, send)
        doc["mqtt"]["client_id"] += "-new"
        with running(doc) as agent:
            assert shadow_version(agent) == CHALLENGER  # kept from its slot at boot
            wait_for(lambda: agent.pipeline.shadow is None, 20, what="unconfirmed challenger unloaded")
            assert detect(rec, doc, 0).shadow is None
            assert not (agent.cfg.data_dir / "shadow" / NAME / "versions").exists() or not any(
                (agent.cfg.data_dir / "shadow" / NAME / "versions").iterdir()
            )
    rec.close()
