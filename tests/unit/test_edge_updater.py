"""The model updater on its own: driven through UpdaterHost by a stand-in, never by the Agent."""

from __future__ import annotations

import ast
import errno
import importlib
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

import shared.fsutil
from edge_agent.config import AgentConfig
from edge_agent.inference import InferenceBackend
from edge_agent.updater import ModelUpdater, SlotStore, slots
from shared import SCHEMA_VERSION
from shared.ids import new_msg_id, utcnow
from shared.messages import Artifact, DesiredModel, EventValue, LogLevel
from shared.topics import fleet_model_topic, fleet_shadow_topic
from tests.edge_models import BuiltModel, build_classifier
from tests.services import wait_for

REPO = Path(__file__).resolve().parents[2]
MSG_ID = "01J0000000000000000000TRIAL"
NAME = "leafnet"
# The module, not the function of that name the package exports.
download_module = importlib.import_module("edge_agent.updater.download")


class StandInHost:
    """Satisfies edge_agent.updater.UpdaterHost and records what the updater asked of it."""

    def __init__(self, data_dir: Path, **sections: Any) -> None:
        self.cfg = AgentConfig.model_validate(
            {"device": {"farm_id": "farm1", "device_id": "dev1"}, "data_dir": str(data_dir), **sections}
        )
        self.events: list[tuple[str, str, dict[str, EventValue]]] = []
        self.errors: list[str] = []
        self.installed: list[tuple[str, InferenceBackend | None]] = []
        self.status_requests = 0
        self.champion: InferenceBackend | None = None

    def event(self, level: LogLevel, code: str, message: str, details: dict[str, EventValue] | None = None) -> None:
        self.events.append((level, code, details or {}))

    def count_error(self, code: str) -> None:
        self.errors.append(code)

    def serving(self, task: str) -> InferenceBackend | None:
        return self.champion if task == "disease_classification" else None

    def serving_shadow(self) -> InferenceBackend | None:
        return None

    def model_counts(self, backend: InferenceBackend) -> tuple[int, int]:
        return (0, 0)

    def install_champion(
        self, new: InferenceBackend, old: InferenceBackend | None, fallback: InferenceBackend | None = None
    ) -> None:
        self.installed.append(("champion", new))
        self.champion = new

    def install_yield(
        self, new: InferenceBackend, old: InferenceBackend | None, fallback: InferenceBackend | None = None
    ) -> None:
        self.installed.append(("yield", new))

    def install_shadow(self, new: InferenceBackend | None) -> None:
        self.installed.append(("shadow", new))

    def publish_status_soon(self) -> None:
        self.status_requests += 1

    def run_yield_soon(self) -> None:
        pass

    def check_models_in(self, delay_s: float) -> None:
        pass


def test_boot_rolls_back_a_trial_that_was_never_committed(tmp_path: Path) -> None:
    host = StandInHost(tmp_path)
    store = SlotStore(tmp_path / "models")
    store.write("leaf", {"active": None, "trial": "2.0.0", "trial_msg_id": MSG_ID})
    store.version_dir("leaf", "2.0.0").mkdir(parents=True)
    ModelUpdater(host).boot()
    state = store.read("leaf")
    assert state["trial"] is None and state["active"] is None and state["failed"] == {"2.0.0": MSG_ID}
    assert "trial_msg_id" not in state
    assert not store.version_dir("leaf", "2.0.0").exists()
    [(level, code, details)] = host.events
    assert (level, code) == ("warning", "model_rolled_back")
    assert details["reason"] == "uncommitted_at_boot" and details["version"] == "2.0.0"
    assert host.status_requests == 1 and host.installed == []


def test_messages_refused_on_the_mqtt_thread_are_reported_through_the_host(tmp_path: Path) -> None:
    host = StandInHost(tmp_path)
    updater = ModelUpdater(host)
    updater.on_message(fleet_model_topic("farm1", "leaf"), b"{not json", retained=True)
    [(level, code, details)] = host.events
    assert (level, code) == ("warning", "model_rejected")
    assert details["model"] == "leaf" and details["role"] == "champion" and details["state"] == "rejected"
    assert host.errors == [f"desired_{details['reason']}"]
    updater.on_message("cropwatch/v1/farm1/_fleet/bogus/leaf", b"{}", retained=True)
    assert host.errors[-1] == "desired_topic" and len(host.events) == 1


def test_an_ended_shadow_run_with_no_challenger_changes_nothing(tmp_path: Path) -> None:
    host = StandInHost(tmp_path)
    updater = ModelUpdater(host)
    updater.start()
    updater.on_message(fleet_shadow_topic("farm1", "leaf"), b"", retained=True)
    updater.stop()
    assert host.events == [] and host.errors == [] and host.installed == []


def test_the_updater_imports_neither_the_agent_nor_a_backend() -> None:
    for path in (REPO / "edge_agent" / "updater").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not any("daemon" in n or "onnxruntime" in n for n in names), (path.name, names)


# --- transient failures (a full disk) are retried, permanent ones are not ---------------------


@pytest.fixture(scope="module")
def leafnet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BuiltModel]:
    root = tmp_path_factory.mktemp("leafnet")
    keys = root / "keys"
    keys.mkdir()
    return {v: build_classifier(root / v, name=NAME, version=v, temperature=1.0 + i, key_dir=keys)
            for i, v in enumerate(["1.0.0", "2.0.0"])}  # fmt: skip


def slot_copy(store: SlotStore, built: BuiltModel) -> Path:
    """A version in its slot as a finished download leaves it (so nothing is fetched)."""
    folder = store.version_dir(NAME, built.manifest.version)
    folder.mkdir(parents=True)
    for f in built.manifest.files:
        shutil.copy(built.directory / f.path, folder / f.path)
    built.manifest.save(folder / "manifest.json")
    return folder


def desired(built: BuiltModel) -> DesiredModel:
    # Port 9 (discard): nothing listens, so a download that was not meant to happen fails.
    arts = [Artifact(variant=f.variant, url=f"http://127.0.0.1:9/{f.path}", sha256=f.sha256, size=f.size)
            for f in built.manifest.files]  # fmt: skip
    return DesiredModel(
        schema_version=SCHEMA_VERSION, msg_id=new_msg_id(), observed_at=utcnow(), device_id="_fleet",
        farm_id="farm1", model_name=NAME, version=built.manifest.version, manifest=built.manifest,
        artifacts=arts, allow_downgrade=True,
    )  # fmt: skip


def serving_from_slots(tmp_path: Path, leafnet: dict[str, BuiltModel], active: str, **updates: Any) -> StandInHost:
    """A host whose champion is ``active``, loaded from its slot at boot; both versions in the slot."""
    store = SlotStore(tmp_path / "models")
    for built in leafnet.values():
        slot_copy(store, built)
    store.write(NAME, {"active": active})
    settings = {"retry_s": 0.05, "retry_max_s": 0.2, "health_window_s": 3600, **updates}
    trust = {"public_keys": [str(leafnet["1.0.0"].public_key)]}
    return StandInHost(tmp_path, trust=trust, updates=settings)


class FullDisk:
    """Slot state writes fail with ENOSPC while ``full`` is set, as on a device whose disk filled up."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = threading.Event()
        real = shared.fsutil.atomic_write_text

        def write(path: Any, text: str, mode: int | None = None) -> Path:
            if self.full.is_set():
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            return real(path, text, mode)

        monkeypatch.setattr(slots, "atomic_write_text", write)


def test_a_rollback_refused_by_a_full_disk_is_applied_once_there_is_room(
    tmp_path: Path, leafnet: dict[str, BuiltModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    host = serving_from_slots(tmp_path, leafnet, active="2.0.0")
    store = SlotStore(tmp_path / "models")
    updater = ModelUpdater(host)
    updater.boot()
    assert host.champion is not None and host.champion.manifest.version == "2.0.0"
    disk = FullDisk(monkeypatch)
    disk.full.set()
    before = store.state_path(NAME).read_bytes()
    updater.start()
    try:
        # One retained message, delivered once: the rollback to 1.0.0.
        rollback = desired(leafnet["1.0.0"])
        updater.on_message(fleet_model_topic("farm1", NAME), rollback.to_json(), retained=True)
        wait_for(lambda: host.errors.count("update_disk_full") >= 2, 10, what="two attempts refused by the disk")
        # Nothing changed while the disk was full: 2.0.0 serves, its state file is whole.
        assert host.champion.manifest.version == "2.0.0"
        assert store.state_path(NAME).read_bytes() == before
        assert updater.retrying[(NAME, "champion")].desired.msg_id == rollback.msg_id
        refused = [d for _, code, d in host.events if code == "model_rejected"]
        assert refused and all(d["reason"] == "disk_full" and d["version"] == "1.0.0" for d in refused)
        disk.full.clear()  # the disk has room again; no new message comes
        wait_for(lambda: host.champion is not None and host.champion.manifest.version == "1.0.0", 10,
                 what="rollback applied after the disk freed")  # fmt: skip
        wait_for(lambda: not updater.retrying, 10, what="no retry left")
    finally:
        updater.stop()
    assert store.read(NAME)["trial"] == "1.0.0" and store.read(NAME)["trial_msg_id"] == rollback.msg_id
    assert updater.outcome[NAME] == (rollback.msg_id, "trial")
    assert [code for _, code, _ in host.events][-1] == "model_trial"
    assert "model_update" not in host.errors  # never "failed unexpectedly"


def test_a_newer_message_replaces_an_update_waiting_for_room(
    tmp_path: Path, leafnet: dict[str, BuiltModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    host = serving_from_slots(tmp_path, leafnet, active="2.0.0", retry_s=3600)
    updater = ModelUpdater(host)
    updater.boot()
    disk = FullDisk(monkeypatch)
    disk.full.set()
    updater.process(desired(leafnet["1.0.0"]))
    assert updater.retrying[(NAME, "champion")].attempt == 1
    disk.full.clear()
    newer = desired(leafnet["2.0.0"])  # back to the running version: nothing to do
    updater.process(newer)
    assert updater.retrying == {} and updater.outcome[NAME] == (newer.msg_id, "current")


def test_a_permanent_failure_is_not_retried(tmp_path: Path, leafnet: dict[str, BuiltModel]) -> None:
    host = serving_from_slots(tmp_path, leafnet, active="1.0.0")
    store = SlotStore(tmp_path / "models")
    updater = ModelUpdater(host)
    updater.boot()
    # The slot's copy of 2.0.0 no longer matches its signed digest.
    f = leafnet["2.0.0"].manifest.file("fp32")
    with open(store.version_dir(NAME, "2.0.0") / f.path, "r+b") as fh:
        fh.seek(f.size // 2)
        fh.write(b"\xff\xfe")
    d = desired(leafnet["2.0.0"])
    updater.process(d)
    assert updater.retrying == {}
    msg_id, reason = updater.outcome[NAME]
    assert msg_id == d.msg_id and reason == "load"
    assert host.errors == ["update_load"]
    assert host.champion is not None and host.champion.manifest.version == "1.0.0"
    assert not store.version_dir(NAME, "2.0.0").exists()


def test_a_download_refused_by_a_full_disk_waits_for_a_retry(
    tmp_path: Path, leafnet: dict[str, BuiltModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    host = StandInHost(tmp_path, trust={"public_keys": [str(leafnet["1.0.0"].public_key)]})
    calls: list[str] = []

    def no_room(url: str, *_: Any) -> None:
        calls.append(url)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(download_module, "download", no_room)
    updater = ModelUpdater(host)
    updater.process(desired(leafnet["1.0.0"]))
    # Not the download's own quick resumes: no room now is no room in a second.
    assert len(calls) == 1
    retry = updater.retrying[(NAME, "champion")]
    assert retry.attempt == 1 and updater.outcome[NAME][1] == "disk_full"
    assert host.errors == ["update_disk_full"] and host.champion is None


def test_a_commit_refused_by_a_full_disk_keeps_the_trial_and_commits_later(
    tmp_path: Path, leafnet: dict[str, BuiltModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    host = serving_from_slots(tmp_path, leafnet, active="1.0.0", health_window_s=0.01)
    store = SlotStore(tmp_path / "models")
    updater = ModelUpdater(host)
    updater.boot()
    updater.process(desired(leafnet["2.0.0"]))
    assert updater.trial is not None
    disk = FullDisk(monkeypatch)
    disk.full.set()
    wait_for(lambda: "model_commit_write" in host.errors if updater.check_health() else False, 5,
             what="a commit refused by the disk")  # fmt: skip
    # Not rolled back: still on trial, serving, and not marked failed.
    assert updater.trial is not None and host.champion is not None and host.champion.manifest.version == "2.0.0"
    assert store.read(NAME)["trial"] == "2.0.0" and store.read(NAME)["failed"] == {}
    disk.full.clear()
    assert updater.check_health() is None
    assert store.read(NAME)["active"] == "2.0.0" and store.read(NAME)["trial"] is None
    assert "model_rolled_back" not in host.errors


def test_a_rollback_whose_state_cannot_be_written_still_serves_the_old_model(
    tmp_path: Path, leafnet: dict[str, BuiltModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    host = serving_from_slots(tmp_path, leafnet, active="1.0.0")
    store = SlotStore(tmp_path / "models")
    updater = ModelUpdater(host)
    updater.boot()
    d = desired(leafnet["2.0.0"])
    updater.process(d)
    trial = updater.trial
    assert trial is not None
    disk = FullDisk(monkeypatch)
    disk.full.set()
    assert updater.on_model_failure(trial.backend)
    # Served by 1.0.0 and no trial left that a later check could commit; on disk still "trial",
    # which boot rolls back the same way.
    assert host.champion is trial.old and updater.trial is None and updater.check_health() is None
    assert SlotStore(tmp_path / "models").read(NAME)["trial"] == "2.0.0"
    disk.full.clear()
    updater.start()
    try:
        wait_for(lambda: SlotStore(tmp_path / "models").read(NAME)["trial"] is None, 10,
                 what="deferred rollback state written")  # fmt: skip
    finally:
        updater.stop()
    assert store.read(NAME)["failed"] == {"2.0.0": d.msg_id}


def test_a_failed_state_write_leaves_the_old_file_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SlotStore(tmp_path)
    store.write(NAME, {"active": "1.0.0"})
    before = store.state_path(NAME).read_bytes()

    def no_room(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_room)  # inside atomic_write_bytes: the data is written, not yet durable
    with pytest.raises(OSError) as exc:
        store.write(NAME, {"active": "2.0.0", "previous": "1.0.0"})
    monkeypatch.undo()
    assert exc.value.errno == errno.ENOSPC
    assert store.state_path(NAME).read_bytes() == before
    assert [p.name for p in store.state_path(NAME).parent.iterdir()] == ["state.json"]  # no temp file left
