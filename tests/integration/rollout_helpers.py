"""Helpers for the rollout tests: a registry served over real HTTP, agents, and crafted desired-model messages."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from edge_agent.config import load_agent_config
from edge_agent.daemon import Agent
from fleet.registry import Registry
from fleet.registry_server import RegistryHTTPServer
from shared.ids import new_msg_id, utcnow
from shared.manifest import (
    ImagePreprocessing,
    ModelManifest,
    TensorData,
    TensorSpec,
    TrustedKeys,
    load_private_key,
    sign_manifest,
)
from shared.messages import Artifact, DesiredModel
from tests.edge_helpers import Recorder, agent_config, to_toml
from tests.edge_models import LEAF_LABELS, BuiltModel, _write_and_sign, build_classifier, classifier_graph
from tests.services import wait_for

NAME = "leafnet"
TOKEN = "registry-secret"


@contextlib.contextmanager
def serving(registry: Registry) -> Iterator[str]:
    server = RegistryHTTPServer(("127.0.0.1", 0), registry, token=TOKEN)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.url
    finally:
        server.shutdown()
        server.server_close()


def import_model(registry: Registry, built: BuiltModel) -> None:
    registry.import_version(built.manifest_path, TrustedKeys.from_sources([str(built.public_key)]))


def registry_with(root: Path, models: Iterable[BuiltModel]) -> Registry:
    """A registry folder under ``root`` holding every one of ``models``."""
    reg = Registry(root / "registry")
    for b in models:
        import_model(reg, b)
    return reg


def build_fixed_batch(directory: Path, key_dir: Path, version: str, size: int = 32) -> BuiltModel:
    """A model that passes its self-test (batch 2) and fails on every single-image batch the agent runs."""
    graph = classifier_graph(size, LEAF_LABELS, temperature=3.0)
    for value_info in (graph.graph.input[0], graph.graph.output[0]):
        value_info.type.tensor_type.shape.dim[0].dim_value = 2
    return _write_and_sign(
        directory, {"fp32": graph}, key_dir, False,
        name=NAME, version=version, task="disease_classification",
        inputs=[TensorSpec(name="image", dtype="uint8", shape=[2, size, size, 3])],
        outputs=[TensorSpec(name="probabilities", dtype="float32", shape=[2, len(LEAF_LABELS)])],
        labels=list(LEAF_LABELS), preprocessing=ImagePreprocessing(height=size, width=size),
        self_test_inputs={"image": TensorData.seeded("uint8", [2, size, size, 3], "self-test")},
    )  # fmt: skip


def build_versions(root: Path, versions: list[str]) -> dict[str, BuiltModel]:
    """Same classifier, a different temperature per version, so every version gives different scores."""
    keys = root / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    return {
        v: build_classifier(root / v, name=NAME, version=v, temperature=1.0 + i, key_dir=keys)
        for i, v in enumerate(versions)
    }


def resign(manifest: ModelManifest, key: Path, **changes: Any) -> ModelManifest:
    return sign_manifest(manifest.model_copy(update={**changes, "signature": None}), load_private_key(key))


def crafted(base: DesiredModel, manifest: ModelManifest, artifacts: list[Artifact] | None = None) -> bytes:
    """A desired-model message around ``manifest``, as an attacker with broker access could publish it."""
    doc = base.model_dump(mode="json")
    doc.update(
        msg_id=new_msg_id(),
        observed_at=utcnow().isoformat(),
        version=manifest.version,
        manifest=manifest.model_dump(mode="json"),
    )
    if artifacts is not None:
        doc["artifacts"] = [a.model_dump(mode="json") for a in artifacts]
    return DesiredModel.model_validate(doc).to_json()


def expired_manifest(manifest: ModelManifest, key: Path, version: str) -> ModelManifest:
    return resign(manifest, key, version=version, expires_at=utcnow() - timedelta(hours=1))


def fleet_doc(tmp: Path, port: int, farm: str, device: str, v1: BuiltModel, **updates: Any) -> dict[str, Any]:
    inbox = tmp / device / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    doc = agent_config(
        tmp / device,
        port,
        {
            "trust": {"public_keys": [str(v1.public_key)]},
            "models": [{"manifest": str(v1.manifest_path), "threads": 1, "variants": ["fp32"]}],
        },
        sources=[{"type": "folder", "name": "drop", "path": str(inbox), "settle_s": 0, "scan_interval_s": 0.1}],
        updates={
            "token": TOKEN,
            "token_url_prefix": "http://127.0.0.1:",
            "health_window_s": 0.5,
            "timeout_s": 5,
            **updates,
        },
    )
    doc["device"] = {"farm_id": farm, "device_id": device}
    doc["samples"] = {"enabled": False}
    return doc


@contextlib.contextmanager
def running(doc: dict[str, Any]) -> Iterator[Agent]:
    path = Path(doc["data_dir"]).parent / "agent.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_toml(doc))
    agent = Agent(load_agent_config(path), config_path=path)
    agent.start()
    thread = threading.Thread(target=agent.run, name=f"agent-{doc['device']['device_id']}")
    thread.start()
    try:
        yield agent
    finally:
        agent.request_stop()
        thread.join(30)
        agent.stop()


def farm_recorder(port: int, farm: str) -> Recorder:
    rec = Recorder(port, topic=f"cropwatch/v1/{farm}/+/+", client_id=f"rec-{uuid.uuid4().hex[:8]}")
    wait_for(rec.subscribed.is_set, 10, what="recorder subscribed")
    return rec


def once_per_msg_id(messages: list[Any]) -> list[Any]:
    """One per msg_id, as ingest stores them: an agent restarted within ``[outbox] hold_acked_s``
    sends its last acknowledged messages again (edge_agent/held.py)."""
    return list({m.msg_id: m for m in messages}.values())


def events(rec: Recorder, device: str, code: str) -> list[Any]:
    return once_per_msg_id([e for e in rec.parsed("event") if e.device_id == device and e.code == code])


def detections(rec: Recorder, device: str) -> list[Any]:
    return once_per_msg_id([d for d in rec.parsed("detection") if d.device_id == device])


def drop_image(doc: dict[str, Any], index: int) -> None:
    import numpy as np

    from shared.image import encode_jpeg

    inbox = Path(doc["sources"][0]["path"])
    tmp = inbox / f".{index}.tmp"
    tmp.write_bytes(encode_jpeg(np.full((48, 48, 3), (40, 140 + index % 60, 40), np.uint8)))
    tmp.rename(inbox / f"{index:04d}.jpg")


def detect(rec: Recorder, doc: dict[str, Any], index: int, timeout: float = 20) -> Any:
    """Drop one image and return the detection it produced."""
    device = doc["device"]["device_id"]
    before = len(detections(rec, device))
    drop_image(doc, index)
    wait_for(lambda: len(detections(rec, device)) > before, timeout, what=f"detection of image {index} on {device}")
    return detections(rec, device)[-1]


def served_by(rec: Recorder, doc: dict[str, Any], index: int, timeout: float = 20) -> str:
    """Drop one image and return the model version of the detection it produced."""
    return detect(rec, doc, index, timeout).model.version
