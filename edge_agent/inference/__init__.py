"""Inference backends behind one small Protocol, one file per config ``type``.

A backend loads a model from its signed manifest, proves it by reproducing the manifest's
reference output (the self-test), and then runs batches. A model that fails verification or the
self-test is not loaded: :class:`ModelLoadError` says why.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from shared.errors import ContractError
from shared.manifest import ModelManifest, TrustedKeys


class ModelLoadError(ContractError):
    """A model that may not run: bad signature, wrong file, failed self-test, unusable spec."""


class InferenceBackend(Protocol):
    manifest: ModelManifest
    variant: str
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


def load_backend(settings, trusted: TrustedKeys, require_signature: bool = True) -> InferenceBackend:  # type: ignore[no-untyped-def]
    """Build the backend named by ``settings.type``."""
    if settings.type == "onnxruntime":
        from .onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend.load(settings, trusted, require_signature=require_signature)
    raise ModelLoadError("unknown_backend", f"inference backend type {settings.type!r} is not known")
