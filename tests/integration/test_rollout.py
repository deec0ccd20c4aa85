"""Over-the-air rollout over a real broker, real HTTP (the registry server) and real ONNX models.

Versions of the same tiny classifier differ in temperature, so the model version on each
detection says which model served it.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from edge_agent.updater import CRASH_STEPS, UpdateRejected, download
from fleet import models_cli, rollout
from fleet.mqtt_publish import publish_retained
from fleet.registry import Registry, RegistryError
from shared.manifest import ModelManifest, generate_keypair, load_private_key, verify_artifact
from shared.messages import Artifact, RolloutPolicy
from shared.rollout import selects
from shared.topics import fleet_model_topic, fleet_shadow_topic
from tests.edge_helpers import to_toml
from tests.integration.ingest_helpers import config as ingest_config, ingest_thread
from tests.integration.rollout_helpers import (
    NAME,
    TOKEN,
    build_fixed_batch,
    build_versions,
    crafted,
    detections,
    events,
    expired_manifest,
    farm_recorder,
    fleet_doc,
    import_model,
    registry_with,
    resign,
    running,
    served_by,
    serving,
)
from tests.services import cropwatch_cmd, cropwatch_env, wait_for


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return build_versions(tmp_path_factory.mktemp("rollout-models"), ["1.0.0", "2.0.0", "0.9.0"])


@pytest.fixture
def registry(tmp_path: Path, built) -> Registry:  # type: ignore[no-untyped-def]
    return registry_with(tmp_path, built.values())


def publisher(broker):  # type: ignore[no-untyped-def]
    return lambda topic, payload: publish_retained(broker.url, topic, payload)


def active_version(agent) -> str:  # type: ignore[no-untyped-def]
    return agent.pipeline.champion.manifest.version


def settled(agent, version: str) -> bool:  # type: ignore[no-untyped-def]
    return active_version(agent) == version and agent.updater.trial is None


def test_download_resumes_with_range_and_caps_size(tmp_path: Path, registry: Registry, built) -> None:  # type: ignore[no-untyped-def]
    entry = registry.get(NAME, "2.0.0")
    f = entry.manifest.file("fp32")
    real = (entry.path / f.path).read_bytes()
    with serving(registry) as url:
        file_url = f"{url}/{NAME}/2.0.0/{f.path}"
        part = tmp_path / "x.part"
        # A prefix that is not the file's: resuming keeps it, fetching everything again would not.
        part.write_bytes(b"\0" * 100)
        download(file_url, part, f.size, TOKEN, 5, float("inf"))
        assert part.read_bytes() == b"\0" * 100 + real[100:]
        part.unlink()
        with pytest.raises(UpdateRejected) as exc:
            download(file_url, part, f.size - 10, TOKEN, 5, float("inf"))
        assert exc.value.reason == "too_large"


def test_fleet_percent_then_all_status_and_cli_rollback(  # type: ignore[no-untyped-def]
    tmp_path: Path, mqtt_broker, registry: Registry, built, sqlite_url: str, capsys
) -> None:
    farm = "rollfleet"
    candidates = [f"gw-{c}" for c in "abcdefghijklmnop"]
    inside = [d for d in candidates if selects(RolloutPolicy(percent=34), NAME, d)]
    outside = [d for d in candidates if d not in inside]
    fleet = [inside[0], outside[0], outside[1]]
    rec = farm_recorder(mqtt_broker.port, farm)
    base = ["--registry", str(registry.root)]
    with (
        serving(registry) as url,
        ingest_thread(ingest_config(sqlite_url, mqtt_broker)),
        running(fleet_doc(tmp_path, mqtt_broker.port, farm, fleet[0], built["1.0.0"])) as a,
        running(fleet_doc(tmp_path, mqtt_broker.port, farm, fleet[1], built["1.0.0"])) as b,
        running(fleet_doc(tmp_path, mqtt_broker.port, farm, fleet[2], built["1.0.0"])) as c,
    ):
        agents = [a, b, c]
        cli = [*base, "publish", NAME, "--farm", farm, "--broker", mqtt_broker.url, "--base-url", url]
        # What the fleet runs now is the first entry of the farm's history (devices on it ignore it).
        assert models_cli.main([*cli[:4], "1.0.0", *cli[4:]]) == 0
        cli = [*cli[:4], "2.0.0", *cli[4:]]
        assert models_cli.main([*cli, "--percent", "34"]) == 0
        first = rollout.read_history(registry, farm, NAME)[-1]["msg_id"]
        outcomes = lambda: [ag.updater.outcome.get(NAME) for ag in agents]  # noqa: E731
        wait_for(lambda: [o and o[0] for o in outcomes()] == [first] * 3, 20, what="all processed the 34% message")
        assert outcomes()[0][1] in ("trial", "active") and [o[1] for o in outcomes()[1:]] == ["not_selected"] * 2
        wait_for(lambda: settled(a, "2.0.0"), 20, what="the hashed 34% device on 2.0.0")
        assert [active_version(ag) for ag in agents] == ["2.0.0", "1.0.0", "1.0.0"]
        wait_for(lambda: events(rec, fleet[0], "model_active"), 10, what="model_active event")
        assert events(rec, fleet[1], "model_downloading") == []

        assert models_cli.main([*cli, "--percent", "100"]) == 0
        wait_for(lambda: all(settled(ag, "2.0.0") for ag in agents), 30, what="whole fleet on 2.0.0")
        for doc_agent, i in zip(agents, range(3), strict=True):
            doc = {"device": {"device_id": fleet[i]}, "sources": [{"path": str(tmp_path / fleet[i] / "inbox")}]}
            assert served_by(rec, doc, i) == "2.0.0"
            assert doc_agent.errors.get("model_rolled_back") is None
        # Events travel in the outbox ahead of the detections above: the first device did not fetch 2.0.0 again.
        assert len(events(rec, fleet[0], "model_downloading")) == 1
        assert [len(events(rec, d, "model_active")) for d in fleet] == [1, 1, 1]

        def table() -> list[dict]:  # type: ignore[type-arg]
            capsys.readouterr()
            assert models_cli.main([*base, "status", NAME, "--farm", farm, "--db", sqlite_url, "--json"]) == 0
            return json.loads(capsys.readouterr().out)

        wait_for(lambda: [(r["device"], r["desired"], r["active"], r["state"]) for r in table()]
                 == [(d, "2.0.0", "2.0.0", "active") for d in sorted(fleet)], 20, what="rollout table")  # fmt: skip

        assert models_cli.main([*base, "rollback", NAME, "--farm", farm, "--broker", mqtt_broker.url]) == 0
        wait_for(lambda: all(settled(ag, "1.0.0") for ag in agents), 30, what="whole fleet back on 1.0.0")
        wait_for(lambda: {(r["desired"], r["active"], r["state"]) for r in table()} == {("1.0.0", "1.0.0", "active")},
                 20, what="rollout table after rollback")  # fmt: skip
        capsys.readouterr()
        assert models_cli.main([*base, "status", NAME, "--farm", farm, "--db", sqlite_url]) == 0
        printed = capsys.readouterr().out.splitlines()
        assert printed[0].split() == ["device", "role", "desired", "active", "state", "since"] and len(printed) == 4
    rec.close()


def test_attacks_are_rejected_while_the_old_model_serves(  # type: ignore[no-untyped-def]
    tmp_path: Path, mqtt_broker, registry: Registry, built
) -> None:
    farm, device = "rollattack", "gw-attacked"
    v1, v2 = built["1.0.0"], built["2.0.0"]
    key = v2.private_key
    other_key, _, _ = generate_keypair(tmp_path / "other")
    # Signed properly, but with one label too many for the model's three outputs.
    wrong_labels = tmp_path / "labels"
    wrong_labels.mkdir()
    for f in v2.manifest.files:
        (wrong_labels / f.path).write_bytes((v2.directory / f.path).read_bytes())
    resign(v2.manifest, key, version="2.1.0", labels=[*v2.manifest.labels, "rust"]).save(wrong_labels / "m.json")
    import_model(registry, type(v2)(wrong_labels, wrong_labels / "m.json", v2.public_key, key, v2.manifest))
    # A version whose file is changed on the server after it was signed and imported.
    tampered = build_versions(tmp_path / "t", ["2.0.1"])["2.0.1"]
    tampered_signed = resign(tampered.manifest, key)
    tampered_signed.save(tampered.manifest_path)
    import_model(registry, type(v2)(tampered.directory, tampered.manifest_path, v2.public_key, key, tampered_signed))
    served_file = registry.get(NAME, "2.0.1").files[0]
    data = bytearray(served_file.read_bytes())
    data[-5] ^= 0xFF
    served_file.write_bytes(bytes(data))

    rec = farm_recorder(mqtt_broker.port, farm)
    doc = fleet_doc(tmp_path, mqtt_broker.port, farm, device, v1)
    topic = fleet_model_topic(farm, NAME)
    with serving(registry) as url, running(doc) as agent:
        base = rollout.build_desired(registry, NAME, "2.0.0", farm, url, RolloutPolicy())
        huge = resign(v2.manifest, key, version="2.3.0",
                      files=[v2.manifest.files[0].model_copy(update={"size": 10**9})])  # fmt: skip
        huge_art = [base.artifacts[0].model_copy(update={"size": 10**9})]
        attacks = {
            "unsigned": crafted(base, v2.manifest.model_copy(update={"signature": None, "version": "2.4.0"})),
            "unknown_key": crafted(base, resign(v2.manifest, other_key, version="2.5.0")),
            "digest_mismatch": rollout.build_desired(registry, NAME, "2.0.1", farm, url, RolloutPolicy()).to_json(),
            "labels_mismatch": rollout.build_desired(registry, NAME, "2.1.0", farm, url, RolloutPolicy()).to_json(),
            "too_large": crafted(base, huge, [Artifact.model_validate(a.model_dump()) for a in huge_art]),
            "downgrade": rollout.build_desired(registry, NAME, "0.9.0", farm, url, RolloutPolicy()).to_json(),
            "expired": crafted(base, expired_manifest(v2.manifest, key, "2.6.0")),
            "agent_too_old": crafted(base, resign(v2.manifest, key, version="2.7.0", min_agent_version="99.0")),
        }
        outcomes = {}
        for i, (reason, payload) in enumerate(attacks.items()):
            publish_retained(mqtt_broker.url, topic, payload)
            wait_for(lambda r=reason: any(e.details.get("reason") == r for e in events(rec, device, "model_rejected")),
                     20, what=f"{reason} rejected")  # fmt: skip
            outcomes[reason] = served_by(rec, doc, i)
        assert outcomes == dict.fromkeys(attacks, "1.0.0")
        assert agent.updater.trial is None and not events(rec, device, "model_trial")
        # Nothing of a refused version was kept.
        versions = agent.cfg.data_dir / "models" / NAME / "versions"
        assert not versions.exists() or not any(versions.iterdir())
        status = [s for s in rec.parsed("status", live_only=False) if s.device_id == device][-1]
        assert status.models[-1].version == "1.0.0" and status.models[-1].state == "active"
        assert status.models[0].state == "rejected"
    rec.close()


def test_a_failing_new_model_is_rolled_back_by_the_agent(
    tmp_path: Path, mqtt_broker, registry: Registry, built
) -> None:  # type: ignore[no-untyped-def]
    farm, device = "rollauto", "gw-auto"
    broken = build_fixed_batch(tmp_path / "broken", built["1.0.0"].private_key.parent, "3.0.0")
    import_model(registry, broken)
    rec = farm_recorder(mqtt_broker.port, farm)
    doc = fleet_doc(tmp_path, mqtt_broker.port, farm, device, built["1.0.0"], health_window_s=120)
    with serving(registry) as url, running(doc) as agent:
        rollout.publish(registry, NAME, "3.0.0", farm, url, publisher(mqtt_broker))
        wait_for(lambda: events(rec, device, "model_trial"), 20, what="3.0.0 on trial")
        assert active_version(agent) == "3.0.0"
        # The same version published again (10% -> 50%, say) leaves the trial alone.
        again = rollout.publish(registry, NAME, "3.0.0", farm, url, publisher(mqtt_broker))
        wait_for(lambda: agent.updater.outcome.get(NAME) == (again.msg_id, "current"), 20, what="republish seen")
        assert agent.updater.trial is not None and active_version(agent) == "3.0.0"
        # A message refused on its merits (a downgrade nobody allowed) must not end the trial.
        stale = rollout.build_desired(registry, NAME, "0.9.0", farm, url, RolloutPolicy())
        publish_retained(mqtt_broker.url, fleet_model_topic(farm, NAME), stale.to_json())
        wait_for(lambda: agent.updater.outcome.get(NAME) == (stale.msg_id, "downgrade"), 20, what="downgrade refused")
        assert agent.updater.trial is not None and active_version(agent) == "3.0.0"
        publish_retained(mqtt_broker.url, fleet_model_topic(farm, NAME), again.to_json())  # the retained one back
        wait_for(lambda: agent.updater.outcome.get(NAME) == (again.msg_id, "current"), 20, what="3.0.0 retained again")
        # The trial fails this image; the old model, still loaded, serves it.
        assert served_by(rec, doc, 0) == "1.0.0"
        wait_for(lambda: events(rec, device, "model_rolled_back"), 10, what="automatic rollback")
        assert "failed inference" in events(rec, device, "model_rolled_back")[0].details["reason"]
        assert settled(agent, "1.0.0")
        assert served_by(rec, doc, 1) == "1.0.0"
        state = json.loads((agent.cfg.data_dir / "models" / NAME / "state.json").read_text())
        assert state["trial"] is None and "3.0.0" in state["failed"]
    # After a restart the retained message for 3.0.0 is not tried again.
    with running(doc) as agent:
        wait_for(lambda: agent.updater.outcome.get(NAME), 20, what="retained message processed again")
        assert agent.updater.outcome[NAME][1] == "current"
        assert settled(agent, "1.0.0") and len(events(rec, device, "model_trial")) == 1
    assert [d.model.version for d in detections(rec, device)] == ["1.0.0", "1.0.0"]
    rec.close()


# What each crash leaves after a restart: the update either finishes (not yet on trial) or the
# uncommitted trial is rolled back at boot and not retried for the same message.
CRASH_OUTCOME = {
    "downloaded": "2.0.0",
    "verified": "2.0.0",
    "staged": "2.0.0",
    "trial_written": "1.0.0",
    "swapped": "1.0.0",
    "committed": "2.0.0",
}


def test_kill_at_every_step_leaves_one_verified_model(  # type: ignore[no-untyped-def]
    tmp_path: Path, mqtt_broker, registry: Registry, built
) -> None:
    assert set(CRASH_OUTCOME) == set(CRASH_STEPS)
    farm = "rollcrash"
    rec = farm_recorder(mqtt_broker.port, farm)

    def start(step: str, crash: bool) -> subprocess.Popen[bytes]:
        config = tmp_path / step / "agent.toml"
        env = {"CW_FAULT_CRASH_AT": step} if crash else {}
        log = open(tmp_path / step / ("crash.log" if crash else "agent.log"), "ab")  # noqa: SIM115
        return subprocess.Popen(cropwatch_cmd("agent", "--config", str(config)), env=cropwatch_env(**env),
                                stdout=log, stderr=subprocess.STDOUT)  # fmt: skip

    docs = {}
    for step in CRASH_STEPS:
        doc = fleet_doc(tmp_path, mqtt_broker.port, farm, step.replace("_", "-"), built["1.0.0"])
        doc["data_dir"] = str(tmp_path / step / "data")
        doc["sources"] = []
        (tmp_path / step).mkdir(parents=True, exist_ok=True)
        (tmp_path / step / "agent.toml").write_text(to_toml(doc))
        docs[step] = doc
    with serving(registry) as url:
        rollout.publish(registry, NAME, "2.0.0", farm, url, publisher(mqtt_broker))
        crashed = {step: start(step, crash=True) for step in CRASH_STEPS}
        codes = {step: p.wait(90) for step, p in crashed.items()}
        assert codes == dict.fromkeys(CRASH_STEPS, 70), "every agent stopped at its crash point"
        restarted = {step: start(step, crash=False) for step in CRASH_STEPS}
        try:

            def final(step: str):  # type: ignore[no-untyped-def]
                device = docs[step]["device"]["device_id"]
                statuses = [s for s in rec.parsed("status", live_only=False) if s.device_id == device]
                models = statuses[-1].models if statuses and statuses[-1].state == "online" else []
                serving_now = [m for m in models if m.state in ("active", "trial")]
                return serving_now if len(serving_now) == 1 and serving_now[0].state == "active" else None

            outcome = {}
            for step in CRASH_STEPS:
                wanted = CRASH_OUTCOME[step]
                # One read per check: a status arriving between two reads made the second one None.
                wait_for(lambda s=step, w=wanted: (got := final(s)) is not None and got[0].version == w, 60,
                         what=f"{step}: one active model {wanted}")  # fmt: skip
                outcome[step] = final(step)[0].version
        finally:
            for p in restarted.values():
                p.send_signal(signal.SIGTERM)
            for p in restarted.values():
                p.wait(30)
    assert outcome == CRASH_OUTCOME
    for step, version in CRASH_OUTCOME.items():
        slots = Path(docs[step]["data_dir"]) / "models" / NAME
        state = json.loads((slots / "state.json").read_text())
        assert state["trial"] is None
        if version == "1.0.0":
            assert state["active"] is None and "2.0.0" in state["failed"]  # the config's model serves
            assert not (slots / "versions" / "2.0.0").exists()
            device = docs[step]["device"]["device_id"]
            wait_for(lambda d=device: events(rec, d, "model_rolled_back"), 10, what=f"{step}: rolled_back event")
            [back] = events(rec, device, "model_rolled_back")
            assert back.details["reason"] == "uncommitted_at_boot"
        else:
            assert state["active"] == "2.0.0"
            manifest = ModelManifest.load(slots / "versions" / "2.0.0" / "manifest.json")
            for f in manifest.files:
                verify_artifact(manifest, f.variant, slots / "versions" / "2.0.0" / f.path)
    rec.close()


def test_publish_refuses_a_retired_version_and_rollback_without_history(tmp_path: Path, registry: Registry) -> None:
    registry.retire(NAME, "0.9.0", "bad")
    sent: list[tuple[str, bytes]] = []

    def send(topic: str, payload: bytes) -> None:
        sent.append((topic, payload))

    with pytest.raises(RegistryError, match="retired"):
        rollout.publish(registry, NAME, "0.9.0", "f1", "http://x", send)
    with pytest.raises(RegistryError, match="nothing was published"):
        rollout.rollback(registry, NAME, "f1", send)
    rollout.publish(registry, NAME, "1.0.0", "f1", "http://x", send)
    rollout.publish(registry, NAME, "2.0.0", "f1", "http://x", send, RolloutPolicy(percent=10))
    back = rollout.rollback(registry, NAME, "f1", send)
    assert (back.version, back.allow_downgrade, back.previous_version) == ("1.0.0", True, "2.0.0")
    assert back.rollout.percent == 100 and sent[-1][0] == fleet_model_topic("f1", NAME) and len(sent) == 3
    # A second rollback has nothing older than 1.0.0 to go to.
    with pytest.raises(RegistryError, match="no earlier version"):
        rollout.rollback(registry, NAME, "f1", send)


def test_signed_rollout_envelope_required_and_tampering_rejected(  # type: ignore[no-untyped-def]
    tmp_path: Path, mqtt_broker, registry: Registry, built
) -> None:
    farm, device = "rollsigned", "gw-signed"
    v1 = built["1.0.0"]
    key = v1.private_key
    other_key, _, _ = generate_keypair(tmp_path / "other")
    rec = farm_recorder(mqtt_broker.port, farm)
    doc = fleet_doc(tmp_path, mqtt_broker.port, farm, device, v1)
    doc["trust"]["require_signed_rollout"] = True
    topic = fleet_model_topic(farm, NAME)

    def rejected(reason: str) -> bool:
        return any(e.details.get("reason") == reason for e in events(rec, device, "model_rejected"))

    with serving(registry) as url, running(doc) as agent:
        # A genuine signed rollback captured before the upgrade below, to be replayed after it.
        captured = rollout.build_desired(registry, NAME, "0.9.0", farm, url, RolloutPolicy(), allow_downgrade=True,
                                         signing_key=load_private_key(key))  # fmt: skip
        # Unsigned envelope (its manifest is signed) under require_signed_rollout: refused, naming the fix.
        rollout.publish(registry, NAME, "2.0.0", farm, url, publisher(mqtt_broker))
        wait_for(lambda: rejected("rollout_unsigned"), 20, what="unsigned envelope rejected")
        [ev] = [e for e in events(rec, device, "model_rejected") if e.details["reason"] == "rollout_unsigned"]
        assert "--signing-key" in ev.message
        assert served_by(rec, doc, 0) == "1.0.0"

        # Signed by the CLI: taken.
        cli = ["--registry", str(registry.root), "publish", NAME, "2.0.0", "--farm", farm, "--broker", mqtt_broker.url]
        assert models_cli.main([*cli, "--base-url", url, "--signing-key", str(key)]) == 0
        assert rollout.read_history(registry, farm, NAME)[-1]["version"] == "2.0.0"
        wait_for(lambda: settled(agent, "2.0.0"), 30, what="signed 2.0.0 active")

        # Signed messages changed after signing: the downgrade flag flipped, the URLs moved, the
        # policy widened; and one signed by a key the device does not trust.
        signed = rollout.build_desired(registry, NAME, "0.9.0", farm, url, RolloutPolicy(devices=["gw-x"]),
                                       signing_key=load_private_key(key))  # fmt: skip
        doc_json = signed.model_dump(mode="json")
        flipped = {**doc_json, "allow_downgrade": True}
        moved = {**doc_json, "artifacts": [{**a, "url": a["url"].replace("127.0.0.1", "localhost")}
                                           for a in doc_json["artifacts"]]}  # fmt: skip
        widened = {**doc_json, "rollout": {**doc_json["rollout"], "devices": None}}
        foreign = rollout.build_desired(registry, NAME, "0.9.0", farm, url, RolloutPolicy(), allow_downgrade=True,
                                        signing_key=load_private_key(other_key))  # fmt: skip
        for i, payload in enumerate([json.dumps(d).encode() for d in (flipped, moved, widened)]):
            before = len([e for e in events(rec, device, "model_rejected")
                          if e.details["reason"] == "rollout_bad_signature"])  # fmt: skip
            publish_retained(mqtt_broker.url, topic, payload)
            wait_for(lambda b=before: len([e for e in events(rec, device, "model_rejected")
                                           if e.details["reason"] == "rollout_bad_signature"]) == b + 1,
                     20, what=f"tampered envelope {i} rejected")  # fmt: skip
            assert served_by(rec, doc, 1 + i) == "2.0.0"
        publish_retained(mqtt_broker.url, topic, foreign.to_json())
        wait_for(lambda: rejected("rollout_unknown_key"), 20, what="envelope signed by an untrusted key rejected")
        assert served_by(rec, doc, 5) == "2.0.0"
        # The captured rollback is validly signed but older than the message 2.0.0 came with.
        publish_retained(mqtt_broker.url, topic, captured.to_json())
        wait_for(lambda: rejected("replayed"), 20, what="replayed signed rollback rejected")
        assert served_by(rec, doc, 6) == "2.0.0"
        assert agent.updater.trial is None and settled(agent, "2.0.0")
        # A signed shadow run, ended, then its own message replayed: refused, no challenger.
        shadow_msg = rollout.publish(registry, NAME, "0.9.0", farm, url, publisher(mqtt_broker),
                                     RolloutPolicy(mode="shadow"), signing_key=load_private_key(key))  # fmt: skip
        wait_for(lambda: agent.pipeline.shadow is not None, 20, what="signed challenger loaded")
        rollout.end_shadow(registry, NAME, farm, publisher(mqtt_broker))
        wait_for(lambda: agent.pipeline.shadow is None, 20, what="challenger unloaded")
        publish_retained(mqtt_broker.url, fleet_shadow_topic(farm, NAME), shadow_msg.to_json())
        wait_for(lambda: agent.updater.shadow_outcome.get(NAME) == (shadow_msg.msg_id, "replayed"), 20,
                 what="replayed shadow message refused")  # fmt: skip
        assert agent.pipeline.shadow is None
    rec.close()
