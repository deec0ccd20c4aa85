"""The model updater on its own: driven through UpdaterHost by a stand-in, never by the Agent."""

from __future__ import annotations

import ast
from pathlib import Path

from edge_agent.config import AgentConfig
from edge_agent.inference import InferenceBackend
from edge_agent.updater import ModelUpdater, SlotStore
from shared.messages import EventValue, LogLevel
from shared.topics import fleet_model_topic, fleet_shadow_topic

REPO = Path(__file__).resolve().parents[2]
MSG_ID = "01J0000000000000000000TRIAL"


class StandInHost:
    """Satisfies edge_agent.updater.UpdaterHost and records what the updater asked of it."""

    def __init__(self, data_dir: Path) -> None:
        self.cfg = AgentConfig.model_validate(
            {"device": {"farm_id": "farm1", "device_id": "dev1"}, "data_dir": str(data_dir)}
        )
        self.events: list[tuple[str, str, dict[str, EventValue]]] = []
        self.errors: list[str] = []
        self.installed: list[tuple[str, InferenceBackend | None]] = []
        self.status_requests = 0

    def event(self, level: LogLevel, code: str, message: str, details: dict[str, EventValue] | None = None) -> None:
        self.events.append((level, code, details or {}))

    def count_error(self, code: str) -> None:
        self.errors.append(code)

    def serving(self, task: str) -> InferenceBackend | None:
        return None

    def serving_shadow(self) -> InferenceBackend | None:
        return None

    def model_counts(self, backend: InferenceBackend) -> tuple[int, int]:
        return (0, 0)

    def install_champion(
        self, new: InferenceBackend, old: InferenceBackend | None, fallback: InferenceBackend | None = None
    ) -> None:
        self.installed.append(("champion", new))

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
