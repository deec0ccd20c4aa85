"""The champion's slots: trial, health window, commit, rollback, and what boot makes of them.

``active: null`` in ``state.json`` means the model named in the config file. A new version first
becomes ``trial`` (state.json written before the swap), serves with the old model still loaded as
fallback, and is committed (``active``, old one ``previous``) when its health window passes; if it
fails a batch, its self-test, or has a higher error rate than the old one, it is rolled back. A
trial found in state.json at boot was never committed, so boot rolls it back.

A commit whose state cannot be written (a full disk) changes nothing: the trial goes on and the
commit is tried again at the next check, so a good model is never rolled back for it. A rollback
serves the old model first and defers its state if need be (see :mod:`.slots`).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

from shared.errors import ManifestError
from shared.manifest import ModelManifest
from shared.messages import DesiredModel

from ..inference import InferenceBackend, ModelLoadError
from .common import YIELD, Reporter, UpdateRejected, crash_point
from .host import UpdaterHost
from .loader import ModelLoader
from .policy import check_common, check_fresh, check_size, check_targeted, check_version
from .slots import SlotStore

logger = logging.getLogger(__name__)


@dataclass
class Trial:
    backend: InferenceBackend
    old: InferenceBackend
    msg_id: str
    started: float
    # Commits tried and refused by the disk (the next check waits longer after each).
    commit_failures: int = 0

    @property
    def task(self) -> str:
        return self.backend.manifest.task


class Trials:
    def __init__(
        self, host: UpdaterHost, store: SlotStore, loader: ModelLoader, report: Reporter, lock: threading.RLock
    ) -> None:
        self._host = host
        self.store = store
        self._loader = loader
        self._report = report
        self._lock = lock
        # Per task (one serving slot each: the pipeline's champion, the yield runner's model).
        self.by_task: dict[str, Trial] = {}

    # --- boot -------------------------------------------------------------------------------

    def boot(self) -> None:
        """Roll back an uncommitted trial, then serve the committed version (if any) instead of the config's."""
        with self._lock:
            self.by_task.clear()  # a reload replaced the serving models; the slots below say what serves
        for name in self.store.names():
            state = self.store.read(name)
            if state["trial"] is not None:
                self._roll_back_at_boot(name, state)
            if state["active"] is None:
                continue
            if self.store.task_of(name, state["active"]) == YIELD and not self._host.cfg.yield_model.enabled:
                # Kept on disk for when [yield] is enabled again.
                logger.warning("model %s is a yield model and [yield] is disabled; not loaded", name)
                continue
            self._load_committed(name, state)

    def _roll_back_at_boot(self, name: str, state: dict[str, Any]) -> None:
        trial = state["trial"]
        state["failed"][trial] = state.pop("trial_msg_id", None) or "boot"
        state["trial"] = None
        saved = self.store.write_or_defer(name, state)
        logger.warning("model %s %s was on trial and never committed: rolled back at boot", name, trial)
        trial_dir = self.store.version_dir(name, trial)
        try:
            sha: str | None = ModelManifest.load(trial_dir / "manifest.json").sha256
        except ManifestError:
            sha = None
        # Kept while the state on disk still names it.
        if saved and trial not in (state["active"], state["previous"]):
            shutil.rmtree(trial_dir, ignore_errors=True)
        self._report(name, trial, sha, "rolled_back", "uncommitted_at_boot", level="warning")

    def _load_committed(self, name: str, state: dict[str, Any]) -> None:
        """Serve the active version, else the previous one; neither loading, the config's model serves."""
        for version in [v for v in (state["active"], state["previous"]) if v]:
            task = self.store.task_of(name, version)
            old = self._host.serving(task)
            try:
                backend = self._loader.load(self.store.manifest_path(name, version), task)
            except ModelLoadError as exc:
                logger.error("model %s %s in slot does not load (%s); trying the next", name, version, exc)
                self._report(name, version, None, "rejected", exc.reason, level="error")
                continue
            if version != state["active"]:
                state.update(active=version, previous=None)
                self.store.write_or_defer(name, state)  # on disk still: the active one fails again, then this
            self._install(task, old, backend)
            return
        logger.error("no slot version of %s loads; the config's model serves", name)
        state.update(active=None, previous=None)
        self.store.write_or_defer(name, state)

    def _install(
        self, task: str, old: InferenceBackend | None, new: InferenceBackend, fallback: InferenceBackend | None = None
    ) -> None:
        if task == YIELD:
            self._host.install_yield(new, old, fallback)
        else:
            self._host.install_champion(new, old, fallback)

    # --- a new version ----------------------------------------------------------------------

    def vet(self, d: DesiredModel) -> None:
        """Every check of a champion message, judged against the trial running for its task (if any)."""
        cfg = self._host.cfg
        check_common(d, cfg, self._loader.trusted())
        if d.rollout.mode != "active":
            raise UpdateRejected("wrong_topic", f"rollout mode {d.rollout.mode} is not for the champion's topic")
        check_fresh(self.store, d, self._lock)
        check_targeted(d, cfg)
        task = d.manifest.task
        with self._lock:
            trial = self.by_task.get(task)
            if trial is not None and trial.backend.manifest.name != d.model_name:
                trial = None
            if trial is not None and trial.backend.manifest.version == d.version:
                # e.g. 10% -> 50%: the trial goes on, and a rollback now holds for this message too
                if d.msg_id > trial.msg_id:
                    state = self.store.read(d.model_name)
                    state["trial_msg_id"] = d.msg_id
                    self.store.write(d.model_name, state)  # first: a failed write leaves it to a retry
                    trial.msg_id = d.msg_id
                raise UpdateRejected("current", "this version is already on trial")
        # Judged against the model a trial would fall back to, and every check done before a trial
        # is ended: a message refused below must not cost a healthy trial.
        try:
            check_version(d, trial.old if trial is not None else self._host.serving(task))
        except UpdateRejected as exc:
            if exc.reason == "current" and trial is not None:
                self.supersede(trial, d.version)  # back to the version the message asks for
            raise
        if self.store.read(d.model_name)["failed"].get(d.version) == d.msg_id:
            raise UpdateRejected("current", "this version was rolled back here; publish it again to retry")
        check_size(self._loader.artifacts(d), cfg)
        if trial is not None:
            self.supersede(trial, d.version)

    def start(self, d: DesiredModel, backend: InferenceBackend) -> None:
        name, task = d.model_name, d.manifest.task
        with self._lock:
            old = self._host.serving(task)
            if old is None:
                # Nothing to fall back to: the new model is better than none, so it is committed at once.
                state = self.store.read(name)
                state.update(active=d.version, trial=None)
                self.store.write(name, state)
                self._install(task, None, backend)
                self._report(name, d.version, backend.manifest.sha256, "active")
                return
            state = self.store.read(name)
            state.update(trial=d.version, trial_msg_id=d.msg_id)
            self.store.write(name, state)
            crash_point("trial_written")
            self.by_task[task] = Trial(backend, old, d.msg_id, time.monotonic())
            self._install(task, old, backend, fallback=old)
        logger.info("model %s %s on trial (fallback %s)", name, d.version, old.manifest.version)
        self._report(name, d.version, backend.manifest.sha256, "trial")
        crash_point("swapped")
        if task == YIELD:
            # A new outlook from the new model now, not at the next scheduled run: it is also the
            # run the health window judges it by.
            self._host.run_yield_soon()
        self._host.check_models_in(min(1.0, self._host.cfg.updates.health_window_s))

    # --- health window ----------------------------------------------------------------------

    def on_failure(self, backend: InferenceBackend) -> bool:
        """A model failed a batch or run; True when it was on trial and has been rolled back."""
        with self._lock:
            for t in list(self.by_task.values()):
                if t.backend is backend:
                    self._rollback(t, "the new model failed inference")
                    return True
        return False

    def check_health(self) -> float | None:
        """Seconds to the next check while a trial runs, None when none does."""
        waits = []
        with self._lock:
            for t in list(self.by_task.values()):
                try:
                    wait = self._check(t)
                except OSError as exc:
                    wait = self._commit_refused(t, exc)
                if wait is not None:
                    waits.append(wait)
        return min(waits) if waits else None

    def _commit_refused(self, t: Trial, exc: OSError) -> float:
        """The commit's state write failed (nothing changed): the trial goes on, checked again later."""
        t.commit_failures += 1
        settings = self._host.cfg.updates
        wait = float(min(settings.retry_max_s, settings.retry_s * 2 ** min(t.commit_failures - 1, 30)))
        m = t.backend.manifest
        logger.warning("model %s %s not committed yet: slot state not written (%s); trying again in %.0f s",
                       m.name, m.version, exc, wait)  # fmt: skip
        self._host.count_error("model_commit_write")
        return wait

    def _check(self, t: Trial) -> float | None:
        settings = self._host.cfg.updates
        total, failed = self._host.model_counts(t.backend)
        old_total, old_failed = self._host.model_counts(t.old)
        old_rate = old_failed / old_total if old_total else 0.0
        if total and failed / total > old_rate:
            self._rollback(t, f"error rate {failed}/{total} above the old model's {old_failed}/{old_total}")
            return None
        elapsed = time.monotonic() - t.started
        # health_min_images counts images; the yield model runs on a schedule, not per image.
        enough = t.task == YIELD or total >= settings.health_min_images
        if elapsed < settings.health_window_s or not enough:
            return max(0.2, min(5.0, settings.health_window_s - elapsed))
        try:
            t.backend.self_test()
        except Exception as exc:
            self._rollback(t, f"self-test at the end of the health window failed: {exc}")
            return None
        self._commit(t)
        return None

    def _commit(self, t: Trial) -> None:
        name, version = t.backend.manifest.name, t.backend.manifest.version
        state = self.store.read(name)
        keep = {version, state["active"]}
        state.update(active=version, previous=state["active"], trial=None)
        state.pop("trial_msg_id", None)
        self.store.write(name, state)
        crash_point("committed")
        self.by_task.pop(t.task, None)
        # The old session is not closed here: the pipeline may still hold it as the fallback of a
        # batch in flight; it is freed with its last reference.
        self._install(t.task, t.old, t.backend)
        self.store.prune(name, keep)
        logger.info("model %s %s committed after its health window", name, version)
        self._report(name, version, t.backend.manifest.sha256, "active")

    def _rollback(self, t: Trial, reason: str) -> None:
        name, version = t.backend.manifest.name, t.backend.manifest.version
        # Served and forgotten first: a failing or superseded model must stop serving, and a trial
        # left in by_task would be committed by a later check, even when the state write below fails.
        self._install(t.task, t.backend, t.old)
        self.by_task.pop(t.task, None)
        state = self.store.read(name)
        state["failed"][version] = t.msg_id
        state.update(trial=None)
        state.pop("trial_msg_id", None)
        self.store.write_or_defer(name, state)  # on disk still "trial": rolled back at boot all the same
        logger.warning("model %s %s rolled back to %s: %s", name, version, t.old.manifest.version, reason)
        self._host.count_error("model_rolled_back")
        self._report(name, version, t.backend.manifest.sha256, "rolled_back", reason, level="warning")

    def supersede(self, trial: Trial, version: str) -> None:
        with self._lock:
            if self.by_task.get(trial.task) is trial:  # not committed or rolled back meanwhile
                self._rollback(trial, f"superseded by desired version {version}")

    def model_state(self, backend: InferenceBackend) -> Literal["trial", "active"]:
        """The ``ActiveModel.state`` of a loaded model."""
        return "trial" if any(t.backend is backend for t in self.by_task.values()) else "active"
