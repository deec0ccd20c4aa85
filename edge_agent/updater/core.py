"""The updater's thread: desired-model messages queued from MQTT, handled one at a time.

An update that fails for a passing reason (:data:`TRANSIENT`: a full disk, another OSError while
writing, the download) is tried again from the same message after a pause (``[updates] retry_s``,
doubled each time up to ``retry_max_s``) until it works or a newer message for that model and
role replaces it: a retained message is delivered once, not again when the disk has room.
Every other refusal (signature, digest, self-test, policy) is final for that message.
"""

from __future__ import annotations

import errno
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Literal

from shared.messages import ActiveModel, DesiredModel
from shared.topics import parse_topic

from ..inference import InferenceBackend
from .common import CHAMPION, SHADOW, Reporter, Role, UpdateRejected, seen_key
from .host import UpdaterHost
from .loader import ModelLoader
from .policy import screen
from .shadow import ShadowSlots
from .slots import SlotStore
from .trial import Trial, Trials

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Job:
    # "shadow_failed": the pipeline saw the challenger fail (``reason`` says how); "flush": a
    # rollback on another thread deferred its slot state, which this thread writes when it can.
    kind: Literal["champion", "shadow", "shadow_failed", "flush"]
    name: str
    desired: DesiredModel | None = None
    reason: str = ""


# Reasons an update can fail for that pass by themselves (the rest are the message's own fault).
TRANSIENT = ("disk_full", "io_error", "download_failed", "download_timeout")


@dataclass(frozen=True)
class Retry:
    """A desired-model message to process again (its last attempt failed transiently)."""

    desired: DesiredModel
    attempt: int  # attempts failed so far
    due: float  # time.monotonic() of the next attempt


class ModelUpdater:
    def __init__(self, host: UpdaterHost) -> None:
        self._host = host
        self._lock = threading.RLock()
        loader = ModelLoader(host)
        self._loader = loader
        self._report = Reporter(host)
        data_dir = host.cfg.data_dir
        self._trials = Trials(host, SlotStore(data_dir / "models"), loader, self._report, self._lock)
        self._shadow = ShadowSlots(host, SlotStore(data_dir / "shadow"), loader, self._report, self._lock)
        self._seen: dict[tuple[str, str], str] = {}
        # Per model name: (msg_id, how it ended: a reject reason, "not_selected", "current", "trial", "active").
        self.outcome: dict[str, tuple[str, str]] = {}
        self._shadow_confirmed: set[str] = set()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        # Per (model name, role): the message waiting for its next attempt.
        self._retries: dict[tuple[str, str], Retry] = {}
        self._flush_failures = 0
        self._flush_due = 0.0

    # --- what the agent reads -----------------------------------------------------------------

    @property
    def trials(self) -> dict[str, Trial]:
        """Per task, the version on trial."""
        return self._trials.by_task

    @property
    def trial(self) -> Trial | None:
        """The disease model's trial (the yield model's is ``trials["yield_forecast"]``)."""
        return self._trials.by_task.get("disease_classification")

    @property
    def pending(self) -> dict[tuple[str, str], ActiveModel]:
        """Per (model name, role): the latest update that is not the serving model, for the status."""
        return self._report.pending

    @property
    def shadow_outcome(self) -> dict[str, tuple[str, str]]:
        """Per model name: (msg_id, how the last challenger message ended)."""
        return self._shadow.outcome

    @property
    def retrying(self) -> dict[tuple[str, str], Retry]:
        """Per (model name, role): the update waiting to be tried again."""
        with self._lock:
            return dict(self._retries)

    def model_state(self, backend: InferenceBackend) -> Literal["trial", "active"]:
        return self._trials.model_state(backend)

    # --- life -------------------------------------------------------------------------------

    def boot(self) -> None:
        """Roll back an uncommitted trial, serve the committed versions, load the persisted challenger.

        Also run after a config reload has put the config's models back.
        """
        self._trials.boot()
        self._shadow.boot()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="model-updater", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(5.0)

    def check_health(self) -> float | None:
        """Called by the main loop during trials; returns seconds to the next check, None when done."""
        try:
            return self._trials.check_health()
        finally:
            self._flush_soon()

    def confirm_shadow(self) -> None:
        """After the first connection: unload a persisted challenger whose retained message is gone."""
        for name in self._shadow.store.names():
            if self._shadow.store.read(name)["active"] is not None and name not in self._shadow_confirmed:
                self._queue.put(_Job(SHADOW, name))

    # --- what the pipeline and the yield runner report ---------------------------------------

    def on_model_failure(self, backend: InferenceBackend) -> bool:
        """A model failed a batch or run; True when it was on trial and has been rolled back."""
        try:
            return self._trials.on_failure(backend)
        finally:
            self._flush_soon()

    def _flush_soon(self) -> None:
        if self._trials.store.unsaved:
            self._queue.put(_Job("flush", ""))  # wakes the updater's thread, which writes it

    def on_shadow_failure(self, backend: InferenceBackend, exc: BaseException) -> None:
        """The pipeline's challenger failed a batch: unload it (the champion's results were stored)."""
        if backend is self._shadow.backend:
            # Unloaded on the updater's thread, which owns the shadow slots (a shadow message may
            # be staging a new challenger right now).
            reason = f"the shadow model failed inference: {exc}"[:200]
            self._queue.put(_Job("shadow_failed", backend.manifest.name, reason=reason))

    # --- messages in --------------------------------------------------------------------------

    def on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        """MQTT callback for ``_fleet/model/+`` and ``_fleet/shadow/+``: check and queue.

        The work happens on the updater's thread.
        """
        name = topic.rsplit("/", 1)[-1][:64]
        try:
            role: Role = SHADOW if parse_topic(topic).category == "fleet_shadow" else CHAMPION
        except ValueError as exc:
            logger.warning("message on %s ignored: %s", topic, exc)
            self._host.count_error("desired_topic")
            return
        if not payload:
            if role == SHADOW:
                self._queue.put(_Job(SHADOW, name))  # the retained shadow run was ended
            else:
                logger.info("desired model %s cleared on %s; the running model keeps serving", name, topic)
                with self._lock:
                    self._retries.pop((name, CHAMPION), None)  # nobody wants it any more
            return
        try:
            desired = screen(payload, name, role, self._host.cfg.device.farm_id)
        except UpdateRejected as exc:
            logger.warning("desired-model message on %s refused: %s", topic, exc)
            self._host.count_error(f"desired_{exc.reason}")
            self._host.event("warning", "model_rejected", f"desired model on {topic} refused: {exc}"[:2000],
                             {"model": name, "state": "rejected", "reason": exc.reason, "role": role})  # fmt: skip
            return
        if desired is None:
            return
        if role == SHADOW:
            self._shadow_confirmed.add(name)
        self._queue.put(_Job(role, name, desired))

    def _run(self) -> None:
        while True:
            try:
                job = self._queue.get(timeout=self._wait())
            except queue.Empty:
                self._retry_due()
                continue
            if job is None:
                return
            self._handle(job)
            self._retry_due()  # also between jobs: a busy queue must not hold retries back

    def _handle(self, job: _Job) -> None:
        try:
            if job.kind == "flush":
                pass  # _retry_due, next, writes deferred slot states
            elif job.kind == "shadow_failed":
                if self._shadow.loaded(job.name):
                    self._shadow.unload(job.name, job.reason, failed=True)
            elif job.desired is None:
                with self._lock:
                    self._seen.pop((job.name, SHADOW), None)
                    self._retries.pop((job.name, SHADOW), None)  # the run ended before it started here
                self._shadow.unload(job.name, "shadow_ended")
            else:
                self.process(job.desired, job.kind)
        except Exception:
            logger.exception("model update of %s (%s) failed unexpectedly", job.name, job.kind)
            self._host.count_error("model_update")

    def _wait(self) -> float | None:
        """Seconds until a retry or a deferred slot state is due; None: nothing is."""
        with self._lock:
            dues = [r.due for r in self._retries.values()]
        if self._trials.store.unsaved or self._shadow.store.unsaved:
            dues.append(self._flush_due)
        return max(0.0, min(dues) - time.monotonic()) if dues else None

    def _retry_due(self) -> None:
        now = time.monotonic()
        if (self._trials.store.unsaved or self._shadow.store.unsaved) and self._flush_due <= now:
            self._flush_slots()
        with self._lock:
            due = [r for r in self._retries.values() if r.due <= now]
        for retry in due:
            d = retry.desired
            role: Role = SHADOW if d.rollout.mode == "shadow" else CHAMPION
            logger.info("trying %s %s again (attempt %d)", d.model_name, d.version, retry.attempt + 1)
            self._handle(_Job(role, d.model_name, d))

    def _flush_slots(self) -> None:
        """Write the slot states a full disk deferred (rollbacks, unloads)."""
        try:
            with self._lock:
                self._trials.store.flush()
                self._shadow.store.flush()
            self._flush_failures, self._flush_due = 0, 0.0
        except OSError as exc:
            self._flush_failures += 1
            self._flush_due = time.monotonic() + self._backoff(self._flush_failures)
            logger.debug("deferred slot state still not written: %s", exc)

    def _backoff(self, failures: int) -> float:
        settings = self._host.cfg.updates
        return float(min(settings.retry_max_s, settings.retry_s * 2 ** min(failures - 1, 30)))

    def process(self, d: DesiredModel, role: Role = CHAMPION) -> None:
        """Check, fetch and start one desired model (on trial, or as the challenger)."""
        name, version, key = d.model_name, d.version, (d.model_name, role)
        with self._lock:
            if self._seen.get(key) == seen_key(d):
                return  # the same retained message again (reconnect)
            self._seen[key] = seen_key(d)
            # This message replaces the one waiting for a retry (or is that one, tried now).
            earlier = self._retries.pop(key, None)
        failures = earlier.attempt if earlier is not None and seen_key(earlier.desired) == seen_key(d) else 0
        slots = self._shadow if role == SHADOW else self._trials
        outcome = self._shadow.outcome if role == SHADOW else self.outcome
        try:
            slots.vet(d)
            backend = self._loader.fetch_and_load(
                d, slots.store, lambda state: self._report(name, version, d.manifest.sha256, state, role=role)
            )
            try:
                if role == SHADOW:
                    self._shadow.start(d, backend)
                else:
                    self._trials.start(d, backend)
            except OSError:
                backend.close()  # its slot state was not written, so it never served
                raise
        except UpdateRejected as exc:
            outcome[name] = (d.msg_id, exc.reason)
            if exc.reason in TRANSIENT:
                self._retry_later(d, role, exc.reason, exc, failures + 1)
            else:
                self._rejected(d, role, exc)
            return
        except OSError as exc:
            # Anything the disk refused (state, staging, manifest): nothing serves from it yet.
            reason = "disk_full" if exc.errno == errno.ENOSPC else "io_error"
            outcome[name] = (d.msg_id, reason)
            self._retry_later(d, role, reason, exc, failures + 1)
            return
        if role == CHAMPION:
            self.outcome[name] = (d.msg_id, "trial" if d.manifest.task in self.trials else "active")

    def _retry_later(self, d: DesiredModel, role: Role, reason: str, exc: Exception, failures: int) -> None:
        name, version, key = d.model_name, d.version, (d.model_name, role)
        delay = self._backoff(failures)
        with self._lock:
            self._seen.pop(key, None)  # the retained message again (a reconnect) is tried at once too
            self._retries[key] = Retry(d, failures, time.monotonic() + delay)
        what = "shadow" if role == SHADOW else "desired"
        logger.warning("%s %s %s failed (%s, attempt %d): %s; trying again in %.1f s",
                       what, name, version, reason, failures, exc, delay)  # fmt: skip
        self._host.count_error(f"{'shadow' if role == SHADOW else 'update'}_{reason}")
        detail = f"{exc}; trying again in {delay:.1f} s (attempt {failures})"
        sha = d.manifest.sha256
        self._report(name, version, sha, "rejected", reason, level="warning", role=role, detail=detail)

    def _rejected(self, d: DesiredModel, role: Role, exc: UpdateRejected) -> None:
        name, version, what = d.model_name, d.version, ("shadow" if role == SHADOW else "desired")
        if exc.reason in ("current", "not_selected"):
            logger.info("%s %s %s: %s", what, name, version, exc)
            if role == SHADOW and exc.reason == "not_selected":
                self._shadow.unload(name, "not_selected")
            return
        logger.warning("%s %s %s rejected: %s", what, name, version, exc)
        self._host.count_error(f"{'shadow' if role == SHADOW else 'update'}_{exc.reason}")
        sha = d.manifest.sha256
        self._report(name, version, sha, "rejected", exc.reason, level="warning", role=role, detail=str(exc))
