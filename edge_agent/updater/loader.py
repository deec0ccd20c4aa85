"""Turns a slot version into a loaded backend, with the settings of the config's model for its task."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from shared.manifest import ModelManifest, SeasonPreprocessing, TrustedKeys
from shared.messages import Artifact, DesiredModel

from ..config import ModelSettings
from ..inference import BackendSettings, InferenceBackend, ModelLoadError, load_backend
from .common import DISEASE, YIELD, UpdateRejected
from .download import fetch_version
from .host import UpdaterHost
from .slots import SlotStore


class ModelLoader:
    def __init__(self, host: UpdaterHost) -> None:
        self._host = host

    def trusted(self) -> TrustedKeys:
        keys = self._host.cfg.trust.public_keys
        return TrustedKeys.from_sources(keys) if keys else TrustedKeys()

    def base_settings(self, task: str) -> BackendSettings | None:
        """The config's model for ``task``, whose settings (threads, providers, variants) a new version keeps."""
        cfg = self._host.cfg
        if task == YIELD:
            return cfg.yield_model.model
        return cfg.models[0] if cfg.models else None

    def load(self, manifest_path: Path, task: str = DISEASE) -> InferenceBackend:
        """Load and self-test a model (raises ModelLoadError)."""
        base = self.base_settings(task)
        settings: BackendSettings = (
            ModelSettings(manifest=manifest_path)
            if base is None
            else base.model_copy(update={"manifest": manifest_path})
        )
        return load_backend(settings, self.trusted(), require_signature=self._host.cfg.trust.require_signature)

    def artifacts(self, d: DesiredModel) -> list[Artifact]:
        """The files of ``d`` this device downloads: fp32 and the variants its config allows."""
        base = self.base_settings(d.manifest.task)
        variants: set[str] = set(base.variants) if base is not None else {"fp32"}
        variants.add("fp32")
        return [a for a in d.artifacts if a.variant in variants]

    def fetch_and_load(self, d: DesiredModel, store: SlotStore, report: Callable[[str], None]) -> InferenceBackend:
        """Make ``d``'s version a complete slot (download unless it is there already) and load it.

        ``report`` is told "downloading" and "verifying" as the update gets there.
        """
        name, version, m = d.model_name, d.version, d.manifest
        final = store.version_dir(name, version)
        wanted = self.artifacts(d)
        if not any(a.variant == "fp32" for a in wanted):
            raise UpdateRejected("missing_variant", "the message lists no fp32 artifact")
        local = (final / "manifest.json").is_file() and ModelManifest.load(final / "manifest.json") == m
        if local:
            report("verifying")
        else:
            report("downloading")
            fetch_version(store, d, wanted, self._host.cfg.updates, lambda: report("verifying"))
        if m.task == YIELD and not isinstance(m.preprocessing, SeasonPreprocessing):
            shutil.rmtree(final, ignore_errors=True)
            raise UpdateRejected("wrong_task", f"{name} {version} is a yield model without a season tensor spec")
        try:
            backend = self.load(final / "manifest.json", m.task)
        except ModelLoadError as exc:
            shutil.rmtree(final, ignore_errors=True)
            raise UpdateRejected(exc.reason, str(exc)) from exc
        width = _output_width(backend)
        if m.labels and width != len(m.labels):
            backend.close()
            shutil.rmtree(final, ignore_errors=True)
            raise UpdateRejected(
                "labels_mismatch", f"{name} {version} has {len(m.labels)} labels but the model outputs {width} scores"
            )
        return backend


def _output_width(backend: InferenceBackend) -> int:
    m = backend.manifest
    out = backend.run({n: td.to_array() for n, td in m.self_test_inputs.items()})[m.outputs[0].name]
    return int(out.shape[-1])
