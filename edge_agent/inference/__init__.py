"""Inference backends: plugins in this package, one file per config ``type`` (docs/edge-agent.md).

A backend loads a model from its signed manifest, proves it by reproducing the manifest's
reference output (the self-test), and then runs batches. A model that fails verification or the
self-test is not loaded: :class:`ModelLoadError` says why. Only a backend's own module touches its
runtime (an onnxruntime session, ...); everything else goes through :class:`InferenceBackend`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from shared.errors import ContractError
from shared.manifest import ModelManifest, TrustedKeys, Variant

from ..plugins import PluginRegistry, UnknownPlugin


class ModelLoadError(ContractError):
    """A model that may not run: bad signature, wrong file, failed self-test, unusable spec."""


class InferenceBackend(Protocol):
    manifest: ModelManifest
    variant: Variant
    provider: str
    max_batch: int

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; inputs and outputs keyed by the manifest's tensor names."""
        ...

    def self_test(self) -> float:
        """Reproduce the manifest's reference output with the loaded variant; raise ModelLoadError if it
        differs beyond the manifest's tolerance. Returns the largest absolute difference."""
        ...

    def close(self) -> None: ...


ALL_VARIANTS: tuple[Variant, ...] = ("fp32", "int8")


class BackendSettings(BaseModel):
    """What every ``[[models]]`` entry has; a backend's own settings model adds its options."""

    model_config = ConfigDict(extra="forbid")
    type: str
    manifest: Path
    # The manifest's variants this device may fetch over the air and load (fp32 always comes too);
    # the backend picks among those that pass their self-test.
    variants: list[Variant] = Field(default_factory=lambda: list(ALL_VARIANTS))
    top_k: Annotated[int, Field(ge=1, le=20)] = 3


# factory(settings, trusted keys, require_signature) -> a loaded, self-tested backend
BACKENDS: PluginRegistry[BackendSettings, [TrustedKeys, bool], InferenceBackend] = PluginRegistry(
    "inference backend", __name__, BackendSettings, default="onnxruntime"
)


def load_backend(settings: BackendSettings, trusted: TrustedKeys, require_signature: bool = True) -> InferenceBackend:
    """Build the backend named by ``settings.type``."""
    try:
        return BACKENDS.create(settings, trusted, require_signature)
    except UnknownPlugin as exc:
        raise ModelLoadError("unknown_backend", str(exc)) from exc
