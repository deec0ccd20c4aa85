"""The work loop: queued images in batches through decode, the model, and into the outbox.

One worker thread takes items off the queue; images that are already waiting join the batch (up
to the model's batch size), so a burst of uploads costs one model call per batch. Every image goes
through :func:`shared.image.decode_image`; one that does not decode is counted by reason
(``image_corrupt``, ``image_truncated``, ...) and skipped. Results, the processed-file marks and
the sample log are stored in one outbox transaction.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from shared.errors import ImageDecodeError
from shared.ids import wall_time
from shared.image import decode_image, encode_jpeg, image_size
from shared.manifest import ImagePreprocessing, Variant
from shared.messages import (
    MAX_SAMPLE_IMAGE_BYTES,
    Detection,
    LabelScore,
    ModelRef,
    Sample,
    SampleReason,
    SensorHealth,
    SensorReading,
    ShadowResult,
    Telemetry,
)
from shared.topics import device_topic

from .abstain import verdicts
from .inference import InferenceBackend
from .outbox import Outbox, OutMessage
from .sampling import SamplePolicy
from .sources import ImageItem, ReadingsItem

logger = logging.getLogger(__name__)

# Base64 and the metadata must still fit the message limit; keep the JPEG a little under 256 KiB.
SAMPLE_JPEG_LIMIT = MAX_SAMPLE_IMAGE_BYTES - 4096


def backend_variant(backend: InferenceBackend) -> Variant:
    return backend.variant


def model_ref(backend: InferenceBackend) -> ModelRef:
    m, variant = backend.manifest, backend_variant(backend)
    return ModelRef(name=m.name, version=m.version, sha256=m.file(variant).sha256, variant=variant)


def _libc_trim() -> Callable[[int], object] | None:
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


_malloc_trim = _libc_trim()


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS once a burst is done (decode buffers of 1080p frames)."""
    if _malloc_trim is not None:
        _malloc_trim(0)


class LatencyStats:
    """The last few hundred per-image inference times, for the heartbeat's p50/p95."""

    def __init__(self, size: int = 512) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, ms: float, n: int = 1) -> None:
        with self._lock:
            self._values.extend([ms] * n)

    def percentiles(self) -> tuple[float | None, float | None]:
        with self._lock:
            if not self._values:
                return None, None
            arr = np.fromiter(self._values, dtype=np.float64)
        return float(np.percentile(arr, 50)), float(np.percentile(arr, 95))


@dataclass
class Identity:
    farm_id: str
    device_id: str
    field_id: str | None = None

    def topic(self, kind: str) -> str:
        return device_topic(self.farm_id, self.device_id, kind)

    def envelope(self) -> dict[str, str | None]:
        return {"farm_id": self.farm_id, "device_id": self.device_id}


class Outgoing(Protocol):
    """A device-to-cloud message as the outbox stores it."""

    @property
    def msg_id(self) -> str: ...

    @property
    def kind(self) -> str: ...

    def to_json(self) -> bytes: ...


def to_out(identity: Identity, msg: Outgoing) -> OutMessage:
    return OutMessage(msg_id=msg.msg_id, kind=msg.kind, topic=identity.topic(msg.kind), payload=msg.to_json())


def top_k(probs: np.ndarray, labels: list[str], k: int) -> list[LabelScore]:
    probs = np.clip(np.nan_to_num(probs.astype(np.float64), nan=0.0), 0.0, 1.0)
    order = np.argsort(-probs, kind="stable")[: min(k, len(labels))]
    return [LabelScore(label=labels[i], probability=float(probs[i])) for i in order]


class Pipeline:
    def __init__(
        self,
        identity: Identity,
        outbox: Outbox,
        samples: SamplePolicy,
        count_error: Callable[[str], None],
        queue_size: int = 256,
        top_k: int = 3,
    ) -> None:
        self.identity = identity
        self.outbox = outbox
        self.samples = samples
        self.count_error = count_error
        self.top_k = top_k
        # None: stop once the items before it are done.
        self.queue: queue.Queue[ImageItem | ReadingsItem | None] = queue.Queue(maxsize=queue_size)
        self.champion: InferenceBackend | None = None
        self.shadow: InferenceBackend | None = None
        # While a new champion is on trial the one it replaced stays loaded: a batch the trial
        # fails on is served by the fallback, so an update never leaves a gap in results.
        self.fallback: InferenceBackend | None = None
        # (model name, version) -> images through it, and images it failed on; the rollout's health window.
        self.model_counts: dict[tuple[str, str], list[int]] = {}
        self.on_model_failure: Callable[[InferenceBackend], object] | None = None
        # A challenger that fails a batch is reported here; the champion's results stand regardless.
        self.on_shadow_failure: Callable[[InferenceBackend, BaseException], None] | None = None
        self.latency = LatencyStats()
        # A metered link (edge_agent/uplink/): telemetry folded per interval, sample images smaller.
        self.shape_telemetry: Callable[[Telemetry], list[Telemetry]] = lambda msg: [msg]
        self.flush_telemetry: Callable[[], list[Telemetry]] = list
        self.sample_max_bytes = SAMPLE_JPEG_LIMIT
        self.processed = Counter[str]()
        self._models_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.busy = threading.Event()

    def set_models(
        self,
        champion: InferenceBackend | None,
        shadow: InferenceBackend | None = None,
        fallback: InferenceBackend | None = None,
    ) -> None:
        with self._models_lock:
            self.champion, self.shadow, self.fallback = champion, shadow, fallback

    def set_shadow(self, shadow: InferenceBackend | None) -> None:
        with self._models_lock:
            self.shadow = shadow

    def counts(self, backend: InferenceBackend) -> tuple[int, int]:
        """(images, failed) seen by this model version in this process."""
        with self._models_lock:
            total, failed = self.model_counts.get((backend.manifest.name, backend.manifest.version), [0, 0])
        return total, failed

    def count(self, backend: InferenceBackend, total: int, failed: int) -> None:
        """Add to a model version's (images or runs, failed) tally; the yield runner reports here too."""
        with self._models_lock:
            entry = self.model_counts.setdefault((backend.manifest.name, backend.manifest.version), [0, 0])
            entry[0] += total
            entry[1] += failed

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pipeline", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float) -> bool:
        """Finish what is queued (up to ``timeout``); True if everything was processed."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.queue.put(None, timeout=max(0.01, deadline - time.monotonic()))
                break
            except queue.Full:
                if time.monotonic() >= deadline:
                    break
        done = True
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
            done = not self._thread.is_alive()
        rest = self.flush_telemetry() if done else []
        if rest:  # the aggregated telemetry's unfinished interval is stored, not lost
            self.outbox.add([to_out(self.identity, m) for m in rest])
        return done

    def pending(self) -> int:
        return self.queue.qsize()

    # --- worker ------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            self.busy.set()
            try:
                if isinstance(item, ReadingsItem):
                    self._readings(item)
                    continue
                batch = [item]
                limit = self.champion.max_batch if self.champion else 1
                stop_after = False
                while len(batch) < limit:
                    try:
                        nxt = self.queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        stop_after = True
                        break
                    if isinstance(nxt, ReadingsItem):
                        self._readings(nxt)
                    else:
                        batch.append(nxt)
                self._images(batch)
                if stop_after:
                    return
            except Exception:
                logger.exception("pipeline step failed; the items are skipped and the worker carries on")
                self.count_error("pipeline")
            finally:
                self.busy.clear()
            if self.queue.empty():
                release_free_memory()

    def _readings(self, item: ReadingsItem) -> None:
        msg = Telemetry(
            **self.identity.envelope(),
            field_id=self.identity.field_id,
            observed_at=item.at,
            readings=[
                SensorReading(sensor=r.sensor, quantity=r.quantity, value=r.value, unit=r.unit) for r in item.readings
            ],
            sensor_health=[
                SensorHealth(sensor=h.sensor, quantity=h.quantity, state=h.state, since=h.since) for h in item.health
            ],
        )
        at = item.at.timestamp()
        out = [to_out(self.identity, m) for m in self.shape_telemetry(msg)]
        self.outbox.add(out, readings=[(at, r.quantity, r.value) for r in item.readings])
        self.processed["telemetry"] += 1

    def _images(self, items: list[ImageItem]) -> None:
        with self._models_lock:
            champion, shadow, fallback = self.champion, self.shadow, self.fallback
        if champion is None:
            logger.error("no disease model is loaded; %d images skipped", len(items))
            self.count_error("no_model")
            for it in items:
                if it.on_done:
                    it.on_done(False)
            return
        good, rejected = self._decode(items, champion)
        messages: list[OutMessage] = []
        sample_times: list[float] = []
        if good:
            batch = np.stack([arr for _, arr in good])
            try:
                outputs, ms = self._infer_all(champion, batch)
                self.count(champion, len(good), 0)
            except Exception:
                self.count(champion, len(good), len(good))
                if fallback is None:
                    raise
                logger.exception(
                    "model %s %s on trial failed a batch; %s serves it",
                    champion.manifest.name, champion.manifest.version, fallback.manifest.version,
                )  # fmt: skip
                self.count_error("model_trial_failed")
                if self.on_model_failure is not None:
                    self.on_model_failure(champion)
                champion = fallback
                if self._size(champion) != tuple(batch.shape[1:3]):
                    good, more_rejected = self._decode([it for it, _ in good], champion)
                    rejected += more_rejected
                    batch = np.stack([arr for _, arr in good])
                outputs, ms = self._infer_all(champion, batch)
                self.count(champion, len(good), 0)
            probs = outputs[champion.manifest.outputs[0].name]
            judged = verdicts(champion.manifest, outputs, probs)
            shadow_out = self._shadow(shadow, good, batch, champion) if shadow is not None else None
            self.latency.add(ms, len(good))
            ref = model_ref(champion)
            labels = champion.manifest.labels or [str(i) for i in range(probs.shape[1])]
            for i, (it, _) in enumerate(good):
                shadow_result = self._shadow_result(shadow, shadow_out, i) if shadow is not None else None
                det = Detection(
                    **self.identity.envelope(),
                    observed_at=it.at,
                    model=ref,
                    source=it.source,
                    image_ref=it.ref[:512],
                    image_sha256=hashlib.sha256(it.data).hexdigest(),
                    field_id=self.identity.field_id,
                    top_k=top_k(probs[i], labels, self.top_k),
                    inference_ms=ms,
                    shadow=shadow_result,
                    status=judged[i].status,
                    trust_score=judged[i].score,
                )
                messages.append(to_out(self.identity, det))
                self.processed[f"status_{det.status}"] += 1
                disagree = shadow_result is not None and shadow_result.top_k[0].label != det.label
                reason = self.samples.reason(det.confidence, it.requested, len(sample_times), disagree, det.status)
                if reason is not None:
                    sample = self._sample(it, det, reason)
                    if sample is not None:
                        out = to_out(self.identity, sample)
                        messages.append(replace(out, priority=2) if reason == "uncertain" else out)
                        if reason != "requested":
                            sample_times.append(wall_time())
        seen = [it.seen_key for it in items if it.seen_key is not None]
        self.outbox.add(messages, seen=seen, sample_at=sample_times)
        self.processed["detection"] += len(good)
        self.processed["rejected"] += len(rejected)
        for it, _ in good:
            if it.on_done:
                it.on_done(True)
        for it in rejected:
            if it.on_done:
                it.on_done(False)

    def _shadow(
        self,
        shadow: InferenceBackend,
        good: list[tuple[ImageItem, np.ndarray]],
        batch: np.ndarray,
        champion: InferenceBackend,
    ) -> tuple[np.ndarray, float] | None:
        """The challenger on the same images; None (and reported) when it fails, never raising."""
        try:
            if self._size(shadow) != self._size(champion) or self._resize(shadow) != self._resize(champion):
                # Same decode+resize as the champion's, to the challenger's input size.
                size, resize = self._size(shadow), self._prep(shadow).resize
                batch = np.stack([decode_image(it.data, size, resize=resize) for it, _ in good])
            return self._infer(shadow, batch)
        except Exception as exc:
            logger.exception("shadow model %s %s failed a batch; the champion's results stand",
                             shadow.manifest.name, shadow.manifest.version)  # fmt: skip
            self.count_error("shadow_failed")
            if self.on_shadow_failure is not None:
                self.on_shadow_failure(shadow, exc)
            return None

    def _shadow_result(
        self, shadow: InferenceBackend, out: tuple[np.ndarray, float] | None, i: int
    ) -> ShadowResult | None:
        """The challenger's view of image ``i`` of a batch (None: it failed the batch)."""
        if out is None:
            return None
        probs, ms = out
        labels = shadow.manifest.labels or [str(j) for j in range(probs.shape[1])]
        return ShadowResult(model=model_ref(shadow), top_k=top_k(probs[i], labels, self.top_k), inference_ms=ms)

    @staticmethod
    def _resize(backend: InferenceBackend) -> str | None:
        return getattr(backend.manifest.preprocessing, "resize", None)

    @staticmethod
    def _prep(backend: InferenceBackend) -> ImagePreprocessing:
        prep = backend.manifest.preprocessing
        if not isinstance(prep, ImagePreprocessing):
            raise TypeError(f"{backend.manifest.name} {backend.manifest.version} is not an image model")
        return prep

    @classmethod
    def _size(cls, backend: InferenceBackend) -> tuple[int, int]:
        prep = cls._prep(backend)
        return (prep.height, prep.width)

    def _decode(
        self, items: list[ImageItem], backend: InferenceBackend
    ) -> tuple[list[tuple[ImageItem, np.ndarray]], list[ImageItem]]:
        size, resize = self._size(backend), self._prep(backend).resize
        good: list[tuple[ImageItem, np.ndarray]] = []
        rejected: list[ImageItem] = []
        for it in items:
            try:
                good.append((it, decode_image(it.data, size, resize=resize)))
            except ImageDecodeError as exc:
                logger.warning("skipped %s: %s", it.ref, exc)
                self.count_error(f"image_{exc.reason}")
                rejected.append(it)
        return good, rejected

    def _infer(self, backend: InferenceBackend, batch: np.ndarray) -> tuple[np.ndarray, float]:
        outputs, ms = self._infer_all(backend, batch)
        return outputs[backend.manifest.outputs[0].name], ms

    def _infer_all(self, backend: InferenceBackend, batch: np.ndarray) -> tuple[dict[str, np.ndarray], float]:
        """Every output of the model (probabilities first; logits and leaf gate where it has them)."""
        name = backend.manifest.inputs[0].name
        results: list[dict[str, np.ndarray]] = []
        t0 = time.perf_counter()
        for start in range(0, len(batch), backend.max_batch):
            results.append(backend.run({name: batch[start : start + backend.max_batch]}))
        ms = (time.perf_counter() - t0) * 1000 / len(batch)
        return {k: np.concatenate([r[k] for r in results], axis=0) for k in results[0]}, ms

    def _sample(self, it: ImageItem, det: Detection, reason: SampleReason) -> Sample | None:
        try:
            width, height = image_size(it.data)
            scale = min(1.0, self.samples.settings.max_side / max(width, height))
            w, h = max(1, round(width * scale)), max(1, round(height * scale))
            jpeg = encode_jpeg(
                decode_image(it.data, (h, w), resize="stretch"), quality=85, max_bytes=self.sample_max_bytes
            )
        except ImageDecodeError as exc:
            logger.warning("cannot make a sample of %s: %s", it.ref, exc)
            return None
        return Sample(
            **self.identity.envelope(),
            observed_at=it.at,
            reason=reason,
            model=det.model,
            detection_msg_id=det.msg_id,
            field_id=self.identity.field_id,
            source=it.source,
            image_ref=it.ref[:512],
            predicted_label=det.label,
            confidence=det.confidence,
            width=w,
            height=h,
            image_jpeg=jpeg,
        )
