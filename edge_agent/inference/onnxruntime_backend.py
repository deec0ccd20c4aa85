"""onnxruntime backend: provider fallback, warm-up, manifest self-test, int8/fp32 by measured latency.

onnxruntime is imported where a session is made, not with this module: the registry imports every
backend module to read the config, and ``--check-config`` must work where the runtime is missing.
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
from pydantic import Field

from shared.errors import ManifestError
from shared.manifest import ModelManifest, TrustedKeys, Variant, verify_artifact, verify_manifest

from . import BACKENDS, BackendSettings, ModelLoadError

if TYPE_CHECKING:
    import onnxruntime as ort

logger = logging.getLogger(__name__)

LATENCY_RUNS = 5


class OnnxRuntimeSettings(BackendSettings):
    type: Literal["onnxruntime"] = "onnxruntime"
    # Providers to try, in order; those this onnxruntime build lacks are skipped.
    providers: list[str] = Field(
        default_factory=lambda: [
            "TensorrtExecutionProvider",
            "CUDAExecutionProvider",
            "OpenVINOExecutionProvider",
            "CPUExecutionProvider",
        ]
    )
    threads: Annotated[int, Field(ge=1, le=64)] = 2
    batch_size: Annotated[int, Field(ge=1, le=256)] = 8
    # The int8 variant must beat fp32 by this factor, so noise in a short measurement does not flip it.
    int8_min_speedup: Annotated[float, Field(gt=0)] = 1.1


def session_options(threads: int) -> ort.SessionOptions:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning worker threads keep a core busy between images; a solar-powered device cannot afford that.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # The arena keeps the peak of every batch size ever seen; on a 1-2 GB board that memory is
    # worth more than the few percent the arena saves.
    opts.enable_cpu_mem_arena = False
    opts.log_severity_level = 3
    return opts


def available_providers(wanted: list[str]) -> list[str]:
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    chosen = [p for p in wanted if p in have]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def create_session(path: Path, providers: list[str], threads: int) -> ort.InferenceSession:
    """Try the providers in order; one that fails to initialise (missing CUDA libs) is dropped."""
    import onnxruntime as ort

    remaining = list(providers)
    while True:
        try:
            return ort.InferenceSession(str(path), sess_options=session_options(threads), providers=remaining)
        except Exception as exc:
            if len(remaining) <= 1:
                raise ModelLoadError("session", f"onnxruntime cannot load {path}: {exc}") from exc
            logger.warning("provider %s failed for %s (%s); falling back", remaining[0], path.name, exc)
            remaining = remaining[1:]


def self_test(session: ort.InferenceSession, manifest: ModelManifest, variant: Variant) -> float:
    """Run the reference input; raise unless every expected output is reproduced within atol.

    Returns the largest absolute difference seen.
    """
    entry = manifest.file(variant)
    if not manifest.self_test_inputs or not entry.expected_outputs:
        raise ModelLoadError(
            "no_self_test",
            f"manifest {manifest.name} {manifest.version} ({variant}) has no self-test vector; "
            "re-export it with self_test_inputs and expected_outputs",
        )
    inputs = {name: td.to_array() for name, td in manifest.self_test_inputs.items()}
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, inputs), strict=True))
    worst = 0.0
    for name, expected_td in entry.expected_outputs.items():
        if name not in outputs:
            raise ModelLoadError("self_test", f"{manifest.name} {variant}: model has no output {name!r}")
        got, expected = outputs[name], expected_td.to_array()
        if got.shape != expected.shape:
            raise ModelLoadError(
                "self_test", f"{manifest.name} {variant}: output {name} shape {got.shape} != expected {expected.shape}"
            )
        diff = float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64)))) if got.size else 0.0
        if not np.isfinite(diff) or diff > entry.atol:
            raise ModelLoadError(
                "self_test",
                f"{manifest.name} {manifest.version} {variant}: self-test output {name} differs by {diff:.3g} "
                f"(atol {entry.atol}); the file does not behave as it did when exported",
            )
        worst = max(worst, diff)
    return worst


def measure_latency(session: ort.InferenceSession, inputs: dict[str, np.ndarray], runs: int = LATENCY_RUNS) -> float:
    times: list[float] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, inputs)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class OnnxRuntimeBackend:
    def __init__(
        self, manifest: ModelManifest, variant: Variant, session: ort.InferenceSession, max_batch: int
    ) -> None:
        self.manifest = manifest
        self.variant: Variant = variant
        self.session: ort.InferenceSession | None = session
        self.provider = session.get_providers()[0]
        self.max_batch = max_batch
        self._output_names = [o.name for o in session.get_outputs()]
        self.latency_s: dict[str, float] = {}

    @classmethod
    def load(
        cls, settings: OnnxRuntimeSettings, trusted: TrustedKeys, require_signature: bool = True
    ) -> OnnxRuntimeBackend:
        manifest_path = Path(settings.manifest)
        try:
            manifest = ModelManifest.load(manifest_path)
        except ManifestError as exc:
            raise ModelLoadError(exc.reason, str(exc)) from exc
        if require_signature or len(trusted):
            if not len(trusted):
                raise ModelLoadError(
                    "no_trusted_keys", "trust.public_keys is empty; add the model signing public key to the config"
                )
            try:
                verify_manifest(manifest, trusted)
            except ManifestError as exc:
                raise ModelLoadError(exc.reason, str(exc)) from exc
        providers = available_providers(list(settings.providers))
        candidates: dict[Variant, tuple[ort.InferenceSession, float]] = {}
        errors: dict[Variant, str] = {}
        for variant in settings.variants:
            try:
                entry = manifest.file(variant)
            except ManifestError:
                continue
            path = manifest_path.parent / entry.path
            try:
                verify_artifact(manifest, variant, path)
                session = create_session(path, providers, settings.threads)
                self_test(session, manifest, variant)  # also the warm-up: first runs allocate and plan
                inputs = {n: td.to_array() for n, td in manifest.self_test_inputs.items()}
                candidates[variant] = (session, measure_latency(session, inputs))
            except (ManifestError, ModelLoadError) as exc:
                errors[variant] = str(exc)
                logger.error("model %s %s variant %s rejected: %s", manifest.name, manifest.version, variant, exc)
        if "fp32" not in candidates:
            detail = errors.get("fp32", "fp32 variant not configured")
            raise ModelLoadError("self_test" if "self-test" in detail else "load", detail)
        chosen: Variant = "fp32"
        if "int8" in candidates:
            fp32_s, int8_s = candidates["fp32"][1], candidates["int8"][1]
            if int8_s * settings.int8_min_speedup <= fp32_s:
                chosen = "int8"
            logger.info(
                "model %s: fp32 %.2f ms, int8 %.2f ms per reference batch; using %s",
                manifest.name, fp32_s * 1e3, int8_s * 1e3, chosen,
            )  # fmt: skip
        session = candidates[chosen][0]
        first_dim = session.get_inputs()[0].shape[0] if session.get_inputs()[0].shape else 1
        max_batch = first_dim if isinstance(first_dim, int) and first_dim > 0 else settings.batch_size
        backend = cls(manifest, chosen, session, max_batch)
        backend.latency_s = {v: c[1] for v, c in candidates.items()}
        logger.info(
            "model %s %s loaded (%s, %s, batch <= %d, self-test passed)",
            manifest.name, manifest.version, chosen, backend.provider, max_batch,
        )  # fmt: skip
        return backend

    def _live(self) -> ort.InferenceSession:
        if self.session is None:
            raise ModelLoadError("closed", f"model {self.manifest.name} {self.manifest.version} was closed")
        return self.session

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._output_names, self._live().run(None, inputs), strict=True))

    def self_test(self) -> float:
        return self_test(self._live(), self.manifest, self.variant)

    def close(self) -> None:
        self.session = None


BACKENDS.register(OnnxRuntimeSettings, OnnxRuntimeBackend.load)
