"""A backend from outside the project: written to a temporary package, named in ``[plugins] modules``,
selected by its ``type`` in ``[[models]]``, and run by the real agent against a real broker."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest

from edge_agent.config import load_agent_config
from edge_agent.daemon import Agent
from edge_agent.inference import BACKENDS
from tests.edge_helpers import Recorder, agent_config, to_toml
from tests.edge_models import build_classifier
from tests.services import wait_for

# One file, nothing else in the project touched: the whole of a new inference backend.
CONSTANT_BACKEND = '''
from typing import Literal

import numpy as np

from edge_agent.inference import BACKENDS, BackendSettings, ModelLoadError
from shared.errors import ManifestError
from shared.manifest import ModelManifest, TrustedKeys, verify_manifest


class ConstantSettings(BackendSettings):
    type: Literal["constant_test"] = "constant_test"
    label: str
    confidence: float = 0.9


class ConstantBackend:
    """Every image gets ``label`` with ``confidence``; the rest shared out over the other labels."""

    provider = "constant"
    variant = "fp32"
    max_batch = 4

    def __init__(self, manifest: ModelManifest, settings: ConstantSettings) -> None:
        self.manifest = manifest
        self.settings = settings

    @classmethod
    def load(cls, settings: ConstantSettings, trusted: TrustedKeys, require_signature: bool) -> "ConstantBackend":
        try:
            manifest = ModelManifest.load(settings.manifest)
            if require_signature:
                verify_manifest(manifest, trusted)
        except ManifestError as exc:
            raise ModelLoadError(exc.reason, str(exc)) from exc
        return cls(manifest, settings)

    def run(self, inputs):
        batch = next(iter(inputs.values()))
        labels = self.manifest.labels
        probs = np.full((len(batch), len(labels)), (1 - self.settings.confidence) / (len(labels) - 1), np.float32)
        probs[:, labels.index(self.settings.label)] = self.settings.confidence
        return {self.manifest.outputs[0].name: probs}

    def self_test(self) -> float:
        return 0.0

    def close(self) -> None:
        pass


BACKENDS.register(ConstantSettings, ConstantBackend.load)
'''


@pytest.fixture
def plugin_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A package on the path that only this test knows; returns the plugin module's name."""
    name = f"cw_plugins_{uuid.uuid4().hex[:8]}"
    package = tmp_path / "site" / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "constant.py").write_text(CONSTANT_BACKEND)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    # The registry is process-wide: the throwaway backend must not outlive this test.
    BACKENDS.types()
    monkeypatch.setattr(BACKENDS, "_plugins", dict(BACKENDS._plugins))
    return f"{name}.constant"


def test_a_backend_from_a_temporary_package_produces_the_agents_detections(
    tmp_path: Path, mqtt_broker, plugin_package: str
) -> None:  # type: ignore[no-untyped-def]
    classifier = build_classifier(tmp_path / "leaf")
    rec = Recorder(mqtt_broker.port, client_id=f"rec-{uuid.uuid4().hex[:8]}")
    wait_for(rec.subscribed.is_set, 10, what="recorder subscribed")
    backend = {"type": "constant_test", "manifest": str(classifier.manifest_path), "label": "late_blight",
               "confidence": 0.875}  # fmt: skip
    doc = agent_config(
        tmp_path,
        mqtt_broker.port,
        {"trust": {"public_keys": [str(classifier.public_key)]}, "models": [backend]},
        plugins={"modules": [plugin_package]},
        sources=[{"type": "simulated_camera", "name": "sim", "interval_s": 0.1, "count": 3, "width": 64, "height": 64}],
        samples={"enabled": False},
    )
    path = tmp_path / "agent.toml"
    path.write_text(to_toml(doc))
    cfg = load_agent_config(path)
    assert type(cfg.models[0]).__name__ == "ConstantSettings"
    agent = Agent(cfg, config_path=path)
    agent.start()
    thread = threading.Thread(target=agent.run, name="agent-main")
    thread.start()
    try:
        wait_for(lambda: len(rec.parsed("detection")) >= 3, 30, what="3 detections")
    finally:
        agent.request_stop()
        thread.join(30)
        agent.stop()
        rec.close()
    detections = rec.parsed("detection")
    assert len(detections) == 3 and {d.source for d in detections} == {"sim"}
    for d in detections:
        assert d.top_k[0].label == "late_blight" and d.top_k[0].probability == pytest.approx(0.875)
        assert d.model.name == classifier.manifest.name and d.model.sha256 == classifier.manifest.sha256
