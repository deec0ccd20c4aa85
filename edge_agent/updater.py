"""Over-the-air model updates: desired-model message in, a verified model swapped in, or a reason why not.

The farm's retained ``_fleet/model/{name}`` message says which version devices should run. The
updater checks it in this order, and the first failure rejects it (reported as an event and in the
status) while the running model keeps serving: the envelope's signature (when present, or required
by ``[trust] require_signed_rollout``), the manifest's signature against ``[trust]``, the
manifest's expiry, the agent version it needs, the rollout policy (:mod:`shared.rollout`), no
downgrade unless the message allows one, the download size cap. Then it downloads into a staging
folder (HTTP Range resume, per-read timeout, overall deadline, bearer token), checks sha256 and
size, moves the files into ``versions/{version}``, loads the model (which runs the manifest
self-test) and checks that the labels match the model's output size.

Slots, per model name under ``data_dir/models/{name}/``::

    state.json            {"active": v|null, "trial": v|null, "previous": v|null, "failed": {v: msg_id}}
    versions/{version}/   complete, verified copies (manifest.json + files); only these are ever loaded
    staging/{version}/    downloads in progress (``*.part`` files resume with Range)

Shadow (challenger) models come on the farm's retained ``_fleet/shadow/{name}`` topic, go through
the same checks, download and self-test, and land in their own slots under
``data_dir/shadow/{name}/`` (``state.json`` ``{"active": v|null, "msg_id": ..., "failed": {...}}``),
so pruning the champion's versions never touches them. A loaded challenger runs beside the
champion (``Pipeline.shadow``); an empty retained payload on its topic, a policy that no longer
selects the device, or a failed inference unloads it. The champion is never touched by any of it.

``active: null`` means the model named in the config file. A new version first becomes ``trial``
(state.json written before the swap), serves with the old model still loaded as fallback, and is
committed (``active``, old one ``previous``) when its health window passes; if it fails a batch,
its self-test, or has a higher error rate than the old one, it is rolled back. A trial found in
state.json at boot was never committed, so boot rolls it back. state.json is only ever replaced
with :func:`shared.fsutil.atomic_write_text`, so a crash between any two steps leaves one of the
states above, each naming complete, verified versions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import shutil
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.errors import ManifestError, MessageError
from shared.fsutil import atomic_write_text, fsync_dir
from shared.ids import msg_id_time
from shared.manifest import ModelManifest, SeasonPreprocessing, TrustedKeys, verify_artifact, verify_manifest
from shared.messages import ActiveModel, DesiredModel, parse_desired_model
from shared.rollout import is_newer, selects
from shared.topics import parse_topic

from .inference import InferenceBackend, ModelLoadError, load_backend
from .inference.onnxruntime_backend import self_test

if TYPE_CHECKING:
    from .daemon import Agent

logger = logging.getLogger(__name__)

CHUNK = 64 * 1024
DOWNLOAD_ATTEMPTS = 3
CHAMPION, SHADOW = "champion", "shadow"
SHADOW_FAILED = "shadow_failed"  # a queue item: the pipeline saw the challenger fail
DISEASE, YIELD = "disease_classification", "yield_forecast"
# Fault injection for the crash-safety tests: CW_FAULT_CRASH_AT=<step> ends the process at that step.
CRASH_ENV = "CW_FAULT_CRASH_AT"  # not CROPWATCH_*: those are config overrides
CRASH_STEPS = ("downloaded", "verified", "staged", "trial_written", "swapped", "committed")


def crash_point(step: str) -> None:
    if os.environ.get(CRASH_ENV) == step:
        logger.critical("%s=%s: exiting at this step on purpose", CRASH_ENV, step)
        logging.shutdown()
        os._exit(70)


def seen_key(d: DesiredModel) -> str:
    """Identifies a message for "seen it already": its msg_id and its content, so a copy altered
    under the same msg_id (rejected) does not hide the genuine message that follows."""
    return f"{d.msg_id}:{hashlib.sha256(d.to_json()).hexdigest()[:16]}"


class UpdateRejected(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Trial:
    backend: InferenceBackend
    old: InferenceBackend
    msg_id: str
    started: float
    baseline_old: tuple[int, int]

    @property
    def task(self) -> str:
        return self.backend.manifest.task


def download(
    url: str,
    part: Path,
    size: int,
    token: str | None,
    timeout_s: float,
    deadline: float,
) -> None:
    """Fetch ``url`` into ``part``, resuming what is there; never more than ``size`` bytes."""
    have = part.stat().st_size if part.exists() else 0
    if have > size:
        part.unlink()
        have = 0
    if have == size:
        return
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if have:
        req.add_header("Range", f"bytes={have}-")
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        if have and resp.status != 206:
            have = 0  # the server ignored the range: start over
        length = resp.headers.get("Content-Length")
        if length is not None and have + int(length) > size:
            raise UpdateRejected("too_large", f"{url} is {have + int(length)} bytes; the manifest says {size}")
        with open(part, "ab" if have else "wb") as fh:
            while True:
                if time.monotonic() > deadline:
                    raise UpdateRejected("download_timeout", f"{url}: download deadline passed at {have} bytes")
                block = resp.read(CHUNK)
                if not block:
                    break
                have += len(block)
                if have > size:
                    raise UpdateRejected("too_large", f"{url} sent more than the manifest's {size} bytes")
                fh.write(block)
            fh.flush()
            os.fsync(fh.fileno())


class SlotStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def state_path(self, name: str) -> Path:
        return self.root / name / "state.json"

    def read(self, name: str) -> dict[str, Any]:
        try:
            state = json.loads(self.state_path(name).read_text())
        except FileNotFoundError:
            state = {}
        return {"active": None, "trial": None, "previous": None, "failed": {}, **state}

    def write(self, name: str, state: dict[str, Any]) -> None:
        self.state_path(name).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.state_path(name), json.dumps(state, sort_keys=True))

    def version_dir(self, name: str, version: str) -> Path:
        return self.root / name / "versions" / version

    def staging_dir(self, name: str, version: str) -> Path:
        return self.root / name / "staging" / version

    def names(self) -> list[str]:
        return sorted(p.parent.name for p in self.root.glob("*/state.json")) if self.root.is_dir() else []


class ModelUpdater:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.store = SlotStore(agent.cfg.data_dir / "models")
        self.shadow_store = SlotStore(agent.cfg.data_dir / "shadow")
        # Per task (one serving slot each: the pipeline's champion, the yield runner's model).
        self.trials: dict[str, Trial] = {}
        # Per (model name, role): the latest update that is not the serving model (downloading ... rolled_back).
        self.pending: dict[tuple[str, str], ActiveModel] = {}
        self._seen: dict[tuple[str, str], str] = {}
        # Per model name: (msg_id, how it ended: a reject reason, "not_selected", "current", "trial", "active").
        self.outcome: dict[str, tuple[str, str]] = {}
        # The same for challengers: ... "active", "unloaded".
        self.shadow_outcome: dict[str, tuple[str, str]] = {}
        # The challenger loaded over the air (None: the config's second classifier, if any, is the shadow).
        self.shadow_backend: InferenceBackend | None = None
        self._shadow_msg_id: str | None = None
        self._config_shadow: InferenceBackend | None = None
        self._shadow_confirmed: set[str] = set()
        self._lock = threading.RLock()
        self._queue: queue.Queue[tuple[str, str, DesiredModel | str | None] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        agent.pipeline.on_model_failure = self._on_trial_failure
        agent.pipeline.on_shadow_failure = self._on_shadow_failure

    # --- life -------------------------------------------------------------------------------

    @property
    def settings(self):  # type: ignore[no-untyped-def]
        return self.agent.cfg.updates

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="model-updater", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(5.0)

    def _trusted(self) -> TrustedKeys:
        keys = self.agent.cfg.trust.public_keys
        return TrustedKeys.from_sources(keys) if keys else TrustedKeys()

    @property
    def trial(self) -> Trial | None:
        """The disease model's trial (the yield model's is ``trials[YIELD]``)."""
        return self.trials.get(DISEASE)

    def _base_settings(self, task: str):  # type: ignore[no-untyped-def]
        if task == YIELD:
            return self.agent.cfg.yield_model.model
        return self.agent.cfg.models[0] if self.agent.cfg.models else None

    def _model_settings(self, manifest_path: Path, task: str = DISEASE):  # type: ignore[no-untyped-def]
        base = self._base_settings(task)
        if base is None:
            from .config import ModelSettings

            return ModelSettings(manifest=manifest_path)
        return base.model_copy(update={"manifest": manifest_path})

    def boot(self) -> None:
        """Roll back an uncommitted trial, then serve the committed version (if any) instead of the config's.

        Also run after a config reload has put the config's models back in the pipeline.
        """
        with self._lock:
            self.trials.clear()  # a reload replaced the pipeline's models; the slots below say what serves
        for name in self.store.names():
            state = self.store.read(name)
            if state["trial"] is not None:
                trial = state["trial"]
                state["failed"][trial] = state.pop("trial_msg_id", None) or "boot"
                state["trial"] = None
                self.store.write(name, state)
                logger.warning("model %s %s was on trial and never committed: rolled back at boot", name, trial)
                trial_dir = self.store.version_dir(name, trial)
                try:
                    sha = ModelManifest.load(trial_dir / "manifest.json").sha256
                except ManifestError:
                    sha = None
                if trial not in (state["active"], state["previous"]):
                    shutil.rmtree(trial_dir, ignore_errors=True)
                self._report(name, trial, sha, "rolled_back", "uncommitted_at_boot", level="warning")
            if state["active"] is None:
                continue
            if self._slot_task(name, state["active"]) == YIELD and not self.agent.cfg.yield_model.enabled:
                # Kept on disk for when [yield] is enabled again.
                logger.warning("model %s is a yield model and [yield] is disabled; not loaded", name)
                continue
            candidates = [state["active"], state["previous"]]
            loaded = False
            for version in [v for v in candidates if v]:
                manifest_path = self.store.version_dir(name, version) / "manifest.json"
                task = self._slot_task(name, version)
                old = self._serving(task)
                try:
                    backend = load_backend(
                        self._model_settings(manifest_path, task),
                        self._trusted(),
                        self.agent.cfg.trust.require_signature,
                    )
                except ModelLoadError as exc:
                    logger.error("model %s %s in slot does not load (%s); trying the next", name, version, exc)
                    self._report(name, version, None, "rejected", exc.reason, level="error")
                    continue
                if version != state["active"]:
                    state.update(active=version, previous=None)
                    self.store.write(name, state)
                self._install(task, old, backend)
                loaded = True
                break
            if not loaded:
                logger.error("no slot version of %s loads; the config's model serves", name)
                state.update(active=None, previous=None)
                self.store.write(name, state)
        self._boot_shadow()

    def _slot_task(self, name: str, version: str) -> str:
        """The task of a slot version (a manifest that does not read fails to load right after)."""
        try:
            return ModelManifest.load(self.store.version_dir(name, version) / "manifest.json").task
        except (ManifestError, OSError):
            return DISEASE

    def _boot_shadow(self) -> None:
        """Load the persisted challenger (a restart keeps a shadow run going without a new download)."""
        with self._lock:
            self._config_shadow = self.agent.pipeline.shadow
            self.shadow_backend = None
        for name in self.shadow_store.names():
            state = self.shadow_store.read(name)
            version = state["active"]
            if version is None:
                continue
            try:
                backend = load_backend(
                    self._model_settings(self.shadow_store.version_dir(name, version) / "manifest.json"),
                    self._trusted(),
                    self.agent.cfg.trust.require_signature,
                )
            except ModelLoadError as exc:
                logger.error("shadow model %s %s in slot does not load (%s); no shadow runs", name, version, exc)
                state.update(active=None, msg_id=None)
                self.shadow_store.write(name, state)
                self._report(name, version, None, "rejected", exc.reason, level="error", role=SHADOW)
                continue
            self._set_shadow(backend, state.get("msg_id"))
            logger.info("shadow model %s %s loaded from its slot", name, version)
            break

    def _set_shadow(self, backend: InferenceBackend | None, msg_id: str | None) -> None:
        """Swap the challenger; the champion and its fallback are left as they are."""
        with self._lock:
            old = self.shadow_backend
            self.shadow_backend, self._shadow_msg_id = backend, msg_id
            models = [m for m in self.agent.models if m is not old and m is not self._config_shadow]
            shadow = backend if backend is not None else self._config_shadow
            self.agent.models = [*models, shadow] if shadow is not None else models
            self.agent.pipeline.set_shadow(shadow)
        # ``old`` is not closed: the pipeline thread may still be inside a batch with it; dropping
        # the last reference frees its session once that batch is done.

    def _serving(self, task: str) -> InferenceBackend | None:
        """The model now serving ``task``: the pipeline's champion, or the yield runner's."""
        if task == YIELD:
            runner = self.agent.yield_runner
            return runner.backend if runner is not None else None
        return self.agent.pipeline.champion

    def _install(
        self,
        task: str,
        old: InferenceBackend | None,
        new: InferenceBackend,
        fallback: InferenceBackend | None = None,
    ) -> None:
        """Make ``new`` serve ``task`` in place of ``old`` (one assignment each, under their locks)."""
        # A trial's fallback stays loaded but is not listed: the status shows what serves.
        models = [m for m in self.agent.models if m is not old and m is not new and m is not fallback]
        if task == YIELD:
            self.agent.models = [*models, new]
            self.agent.set_yield_backend(new, fallback)
            return
        self.agent.models = [new, *models]
        pipe = self.agent.pipeline
        pipe.set_models(new, pipe.shadow, fallback=fallback)
        if old is None:
            # Image sources wait for a first model (a device provisioned without one).
            self.agent.start_waiting_sources()

    # --- message in -------------------------------------------------------------------------

    def on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        """MQTT callback for ``_fleet/model/+`` and ``_fleet/shadow/+``: parse and queue.

        The work happens on the updater's thread.
        """
        name = topic.rsplit("/", 1)[-1][:64]
        try:
            role = SHADOW if parse_topic(topic).category == "fleet_shadow" else CHAMPION
        except ValueError as exc:
            logger.warning("message on %s ignored: %s", topic, exc)
            self.agent.count_error("desired_topic")
            return
        if not payload:
            if role == SHADOW:
                self._queue.put((SHADOW, name, None))  # the retained shadow run was ended
            else:
                logger.info("desired model %s cleared on %s; the running model keeps serving", name, topic)
            return

        def refuse(reason: str, text: str) -> None:
            logger.warning("desired-model message on %s refused: %s", topic, text)
            self.agent.count_error(f"desired_{reason}")
            self.agent.event("warning", "model_rejected", f"desired model on {topic} refused: {text}"[:2000],
                             {"model": name, "state": "rejected", "reason": reason, "role": role})  # fmt: skip

        try:
            desired = parse_desired_model(payload)
        except MessageError as exc:
            refuse(exc.reason, str(exc))
            return
        if desired.farm_id != self.agent.cfg.device.farm_id:
            logger.warning("desired model for farm %s ignored (this is another farm)", desired.farm_id)
            return
        if desired.model_name != name:
            refuse("topic_mismatch", f"message for model {desired.model_name} on the topic of {name}")
            return
        if desired.rollout.mode != ("shadow" if role == SHADOW else "active"):
            where = ".../_fleet/shadow/NAME" if desired.rollout.mode == "shadow" else ".../_fleet/model/NAME"
            refuse("wrong_topic", f"rollout mode {desired.rollout.mode} belongs on {where} "
                                  "(cropwatch models publish --mode shadow publishes a challenger there)")  # fmt: skip
            return
        if role == SHADOW:
            self._shadow_confirmed.add(name)
        self._queue.put((role, name, desired))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            role, name, desired = item
            try:
                if role == SHADOW_FAILED:
                    with self._lock:
                        failing = self.shadow_backend
                    if failing is not None and failing.manifest.name == name:
                        self._unload_shadow(name, str(desired), failed=True)
                elif role == CHAMPION and isinstance(desired, DesiredModel):
                    self.process(desired)
                else:
                    self.process_shadow(name, desired)  # type: ignore[arg-type]
            except Exception:
                logger.exception("model update of %s (%s) failed unexpectedly", name, role)
                self.agent.count_error("model_update")

    # --- the update --------------------------------------------------------------------------

    def _report(
        self,
        name: str,
        version: str,
        sha256: str | None,
        state: str,
        reason: str | None = None,
        level: str = "info",
        role: str = CHAMPION,
        detail: str | None = None,
    ) -> None:
        key = (name, role)
        if state in ("downloading", "verifying", "rejected", "rolled_back") and sha256 is not None:
            self.pending[key] = ActiveModel(name=name, version=version, sha256=sha256, state=state, role=role)  # type: ignore[arg-type]
        elif state in ("active", "trial", "unloaded"):
            self.pending.pop(key, None)
        what = "shadow model" if role == SHADOW else "model"
        # The event says what to do, not only the reason code: operators read it in the monitor.
        text = f"{what} {name} {version}: {state}" + (f" ({reason})" if reason else "")
        text += f": {detail}" if detail else ""
        details: dict[str, Any] = {"model": name, "version": version, "state": state, "role": role}
        if reason:
            details["reason"] = reason[:256]
        self.agent.event(level, f"model_{state}", text[:2000], details)
        self.agent._wake_for("online")  # the retained status shows the new state now, not at the next heartbeat

    def process(self, d: DesiredModel) -> None:
        name, version = d.model_name, d.version
        with self._lock:
            if self._seen.get((name, CHAMPION)) == seen_key(d):
                return  # the same retained message again (reconnect)
            self._seen[(name, CHAMPION)] = seen_key(d)
        sha = d.manifest.sha256
        try:
            self._check(d)
        except UpdateRejected as exc:
            self.outcome[name] = (d.msg_id, exc.reason)
            if exc.reason == "not_selected" or exc.reason == "current":
                logger.info("desired %s %s: %s", name, version, exc)
                return
            logger.warning("desired %s %s rejected: %s", name, version, exc)
            self.agent.count_error(f"update_{exc.reason}")
            self._report(name, version, sha, "rejected", exc.reason, level="warning", detail=str(exc))
            return
        try:
            backend = self._fetch_and_load(d)
        except UpdateRejected as exc:
            logger.warning("update %s %s rejected: %s", name, version, exc)
            self.agent.count_error(f"update_{exc.reason}")
            self.outcome[name] = (d.msg_id, exc.reason)
            if exc.reason in ("download_failed", "download_timeout"):
                with self._lock:
                    self._seen.pop((name, CHAMPION), None)  # retried when the retained message comes again
            self._report(name, version, sha, "rejected", exc.reason, level="warning", detail=str(exc))
            return
        self._start_trial(d, backend)
        self.outcome[name] = (d.msg_id, "trial" if d.manifest.task in self.trials else "active")

    def _check_common(self, d: DesiredModel) -> None:
        """What champion and challenger messages must both pass: trust, expiry, agent version, task."""
        from .daemon import AGENT_VERSION

        cfg = self.agent.cfg
        trusted = self._trusted()
        if not cfg.updates.enabled:
            raise UpdateRejected("updates_disabled", "[updates] enabled = false")
        if not len(trusted) and cfg.trust.require_signature:
            raise UpdateRejected("no_trusted_keys", "trust.public_keys is empty; no update can be verified")
        if d.signature is None and cfg.trust.require_signed_rollout:
            raise UpdateRejected(
                "rollout_unsigned",
                f"desired-model message {d.model_name} {d.version} has no envelope signature and "
                "[trust] require_signed_rollout = true; publish it with `cropwatch models publish --signing-key KEY`",
            )
        if d.signature is not None:
            try:
                d.verify(trusted)
            except ManifestError as exc:
                raise UpdateRejected(exc.reason, str(exc)) from exc
        try:
            verify_manifest(d.manifest, trusted)
        except ManifestError as exc:
            raise UpdateRejected(exc.reason, str(exc)) from exc
        m = d.manifest
        if is_newer(m.min_agent_version, AGENT_VERSION):
            raise UpdateRejected(
                "agent_too_old", f"{m.name} {m.version} needs agent {m.min_agent_version}, this is {AGENT_VERSION}"
            )
        if m.task not in (DISEASE, YIELD):
            raise UpdateRejected("unsupported_task", f"over-the-air updates of {m.task} models are not supported")

    def _check_size(self, d: DesiredModel) -> None:
        wanted = self._artifacts(d)
        total = sum(a.size for a in wanted)
        cap = int(self.agent.cfg.updates.max_download_mb * 1e6)
        if total > cap:
            raise UpdateRejected("too_large", f"{total} bytes to download exceed max_download_mb ({cap} bytes)")

    def _check_fresh(self, store: SlotStore, d: DesiredModel, closed: bool = False) -> None:
        """Replay protection for signed envelopes: refuse one older than the newest signed one seen.

        Only a signed envelope's msg_id can be trusted (an unsigned message can be forged fresh
        anyway), so only those move the mark. ``closed``: a shadow run that ended also refuses its
        own message replayed. msg_ids are ULIDs, ordered by time.
        """
        if d.signature is None:
            return
        name = d.model_name
        with self._lock:
            state = store.read(name)
            newest = state.get("newest_msg_id")
            ended = state.get("closed_msg_id") if closed else None
            if (newest is not None and d.msg_id < newest) or (ended is not None and d.msg_id <= ended):
                mark = max(m for m in (newest, ended) if m is not None)
                raise UpdateRejected(
                    "replayed",
                    f"signed desired-model message {d.msg_id} (made {msg_id_time(d.msg_id):%Y-%m-%d %H:%M:%S}Z) is "
                    f"not newer than {mark} ({msg_id_time(mark):%Y-%m-%d %H:%M:%S}Z), which this device already "
                    "saw: a replay or a stale copy. Publish again to change the model; if the publishing host's "
                    f"clock ran ahead, fix it and remove newest_msg_id from {store.state_path(name)}",
                )
            if newest is None or d.msg_id > newest:
                state["newest_msg_id"] = d.msg_id
                store.write(name, state)

    def _check(self, d: DesiredModel) -> None:
        cfg = self.agent.cfg
        self._check_common(d)
        if d.rollout.mode != "active":
            raise UpdateRejected("wrong_topic", f"rollout mode {d.rollout.mode} is not for the champion's topic")
        self._check_fresh(self.store, d)
        if not selects(d.rollout, d.model_name, cfg.device.device_id, cfg.device.groups):
            raise UpdateRejected("not_selected", "this device is not in the rollout")
        task = d.manifest.task
        if task == YIELD and not cfg.yield_model.enabled:
            raise UpdateRejected("not_selected", "this device runs no yield model ([yield] enabled = false)")
        with self._lock:
            trial = self.trials.get(task)
            if trial is not None and trial.backend.manifest.name != d.model_name:
                trial = None
            if trial is not None and trial.backend.manifest.version == d.version:
                # e.g. 10% -> 50%: the trial goes on, and a rollback now holds for this message too
                if d.msg_id > trial.msg_id:
                    trial.msg_id = d.msg_id
                    state = self.store.read(d.model_name)
                    state["trial_msg_id"] = d.msg_id
                    self.store.write(d.model_name, state)
                raise UpdateRejected("current", "this version is already on trial")
        # Judged against the model a trial would fall back to, and every check done before a trial
        # is ended: a message refused below must not cost a healthy trial.
        base = trial.old if trial is not None else self._serving(task)
        if base is not None and base.manifest.name != d.model_name:
            raise UpdateRejected("not_selected", f"this device runs {base.manifest.name}, not {d.model_name}")
        if base is not None:
            current = base.manifest.version
            if current == d.version:
                if trial is not None:
                    self._supersede(trial, d.version)  # back to the version the message asks for
                raise UpdateRejected("current", "already running this version")
            if not is_newer(d.version, current) and not d.allow_downgrade:
                raise UpdateRejected(
                    "downgrade",
                    f"{d.version} is older than the running {current}; publish it as a rollback to allow that",
                )
        if self.store.read(d.model_name)["failed"].get(d.version) == d.msg_id:
            raise UpdateRejected("current", "this version was rolled back here; publish it again to retry")
        self._check_size(d)
        if trial is not None:
            self._supersede(trial, d.version)

    def _supersede(self, trial: Trial, version: str) -> None:
        with self._lock:
            if self.trials.get(trial.task) is trial:  # not committed or rolled back meanwhile
                self._rollback(trial, f"superseded by desired version {version}")

    def _artifacts(self, d: DesiredModel):  # type: ignore[no-untyped-def]
        base = self._base_settings(d.manifest.task)
        variants = set(base.variants) if base is not None else {"fp32"}
        variants.add("fp32")
        return [a for a in d.artifacts if a.variant in variants]

    def _fetch_and_load(self, d: DesiredModel, role: str = CHAMPION) -> InferenceBackend:
        name, version, m = d.model_name, d.version, d.manifest
        store = self.shadow_store if role == SHADOW else self.store
        final = store.version_dir(name, version)
        wanted = self._artifacts(d)
        if not any(a.variant == "fp32" for a in wanted):
            raise UpdateRejected("missing_variant", "the message lists no fp32 artifact")
        local = (final / "manifest.json").is_file() and ModelManifest.load(final / "manifest.json") == m
        if not local:
            staging = store.staging_dir(name, version)
            staging.mkdir(parents=True, exist_ok=True)
            self._report(name, version, m.sha256, "downloading", role=role)
            deadline = time.monotonic() + self.settings.download_deadline_s
            for art in wanted:
                part = staging / (m.file(art.variant).path + ".part")
                token = self._token_for(art.url)
                for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
                    try:
                        download(art.url, part, art.size, token, self.settings.timeout_s, deadline)
                        break
                    except (urllib.error.URLError, OSError) as exc:
                        if attempt == DOWNLOAD_ATTEMPTS:
                            raise UpdateRejected("download_failed", f"{art.url}: {exc}") from exc
                        logger.warning("download of %s failed (%s); resuming", art.url, exc)
                        time.sleep(min(5.0, attempt * 0.5))  # backoff between attempts, not synchronisation
                    except UpdateRejected:
                        part.unlink(missing_ok=True)
                        raise
            crash_point("downloaded")
            self._report(name, version, m.sha256, "verifying", role=role)
            for art in wanted:
                entry = m.file(art.variant)
                part = staging / (entry.path + ".part")
                try:
                    verify_artifact(m, art.variant, part)
                except ManifestError as exc:
                    part.unlink(missing_ok=True)  # a bad file must not be resumed
                    raise UpdateRejected(exc.reason, str(exc)) from exc
                os.replace(part, staging / entry.path)
            m.save(staging / "manifest.json")
            fsync_dir(staging)
            crash_point("verified")
            if final.exists():
                shutil.rmtree(final)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(staging, final)
            fsync_dir(final.parent)
            crash_point("staged")
        else:
            self._report(name, version, m.sha256, "verifying", role=role)
        if m.task == YIELD and not isinstance(m.preprocessing, SeasonPreprocessing):
            shutil.rmtree(final, ignore_errors=True)
            raise UpdateRejected("wrong_task", f"{name} {version} is a yield model without a season tensor spec")
        try:
            backend = load_backend(
                self._model_settings(final / "manifest.json", m.task),
                self._trusted(),
                self.agent.cfg.trust.require_signature,
            )
        except ModelLoadError as exc:
            shutil.rmtree(final, ignore_errors=True)
            raise UpdateRejected(exc.reason, str(exc)) from exc
        width = self._output_width(backend)
        if m.labels and width != len(m.labels):
            backend.close()
            shutil.rmtree(final, ignore_errors=True)
            raise UpdateRejected(
                "labels_mismatch", f"{name} {version} has {len(m.labels)} labels but the model outputs {width} scores"
            )
        return backend

    def _token_for(self, url: str) -> str | None:
        """The bearer token, only for the registry's URLs when ``token_url_prefix`` says which they are."""
        s = self.settings
        if s.token is None or (s.token_url_prefix and not url.startswith(s.token_url_prefix)):
            return None
        return s.token.get_secret_value()

    @staticmethod
    def _output_width(backend: InferenceBackend) -> int:
        m = backend.manifest
        out = backend.run({n: td.to_array() for n, td in m.self_test_inputs.items()})[m.outputs[0].name]
        return int(out.shape[-1])

    # --- shadow (challenger) ---------------------------------------------------------------------

    def process_shadow(self, name: str, d: DesiredModel | None) -> None:
        """A message on ``_fleet/shadow/{name}``: load the challenger, or unload it (``d`` None: run ended)."""
        if d is None:
            with self._lock:
                self._seen.pop((name, SHADOW), None)
            self._unload_shadow(name, "shadow_ended")
            return
        with self._lock:
            if self._seen.get((name, SHADOW)) == seen_key(d):
                return
            self._seen[(name, SHADOW)] = seen_key(d)
        version, sha = d.version, d.manifest.sha256
        try:
            self._check_common(d)
            if d.manifest.task != DISEASE:
                raise UpdateRejected("unsupported_task", f"shadow runs are for {DISEASE} models, not {d.manifest.task}")
            self._check_fresh(self.shadow_store, d, closed=True)
            if not selects(d.rollout, name, self.agent.cfg.device.device_id, self.agent.cfg.device.groups):
                raise UpdateRejected("not_selected", "this device is not in the shadow run")
            champion = self.agent.pipeline.champion
            if champion is not None and champion.manifest.name != name:
                raise UpdateRejected("not_selected", f"this device runs {champion.manifest.name}, not {name}")
            current = self.shadow_backend
            if current is not None and current.manifest.name == name and current.manifest.version == version:
                state = self.shadow_store.read(name)
                state["msg_id"] = d.msg_id
                self.shadow_store.write(name, state)
                raise UpdateRejected("current", "this challenger is already running")
            if self.shadow_store.read(name)["failed"].get(version) == d.msg_id:
                raise UpdateRejected("current", "this challenger failed here; publish it again to retry")
            self._check_size(d)
            backend = self._fetch_and_load(d, role=SHADOW)
        except UpdateRejected as exc:
            self.shadow_outcome[name] = (d.msg_id, exc.reason)
            if exc.reason == "current":
                logger.info("shadow %s %s: %s", name, version, exc)
                return
            if exc.reason == "not_selected":
                logger.info("shadow %s %s: %s", name, version, exc)
                self._unload_shadow(name, "not_selected")
                return
            if exc.reason in ("download_failed", "download_timeout"):
                with self._lock:
                    self._seen.pop((name, SHADOW), None)
            logger.warning("shadow %s %s rejected: %s", name, version, exc)
            self.agent.count_error(f"shadow_{exc.reason}")
            self._report(name, version, sha, "rejected", exc.reason, level="warning", role=SHADOW, detail=str(exc))
            return
        # State first, then the swap: a crash in between loads this challenger at boot, which is
        # what the message asked for.
        state = self.shadow_store.read(name)
        old = state["active"]
        state.update(active=version, msg_id=d.msg_id)
        self.shadow_store.write(name, state)
        self._set_shadow(backend, d.msg_id)
        self._prune_shadow(name, keep={version})
        self.shadow_outcome[name] = (d.msg_id, "active")
        logger.info("shadow model %s %s runs beside the champion (was %s)", name, version, old or "none")
        self._report(name, version, backend.manifest.sha256, "active", role=SHADOW)

    def _prune_shadow(self, name: str, keep: set[str]) -> None:
        versions = self.shadow_store.version_dir(name, "x").parent
        for old_dir in versions.iterdir() if versions.is_dir() else []:
            if old_dir.name not in keep:
                shutil.rmtree(old_dir, ignore_errors=True)

    def _unload_shadow(self, name: str, reason: str, failed: bool = False) -> None:
        with self._lock:
            state = self.shadow_store.read(name)
            version = state["active"]
            backend = self.shadow_backend
            loaded = backend is not None and backend.manifest.name == name
            if version is None and not loaded:
                return
            if loaded:
                version = backend.manifest.version  # type: ignore[union-attr]
                self._set_shadow(None, None)
            if failed and version is not None:
                state["failed"][version] = state.get("msg_id") or "unknown"
            if reason == "shadow_ended" and state.get("newest_msg_id"):
                # The run's own signed message replayed after the end must not start it again.
                state["closed_msg_id"] = state["newest_msg_id"]
            state.update(active=None, msg_id=None)
            self.shadow_store.write(name, state)
            self._prune_shadow(name, keep=set())
        self.shadow_outcome[name] = (self.shadow_outcome.get(name, ("", ""))[0], "unloaded")
        sha = backend.manifest.sha256 if loaded and backend is not None else None
        if failed:
            logger.warning("shadow model %s %s unloaded: %s", name, version, reason)
            self.agent.count_error("shadow_rolled_back")
            self._report(name, version or "0", sha, "rolled_back", reason, level="warning", role=SHADOW)
        else:
            logger.info("shadow model %s %s unloaded: %s", name, version, reason)
            self._report(name, version or "0", sha, "unloaded", reason, role=SHADOW)

    def _on_shadow_failure(self, backend: InferenceBackend, exc: BaseException) -> None:
        """The pipeline's challenger failed a batch: unload it (the champion's results were stored)."""
        if backend is self.shadow_backend:
            # Unloaded on the updater's thread, which owns the shadow slots (a shadow message may
            # be staging a new challenger right now).
            self._queue.put((SHADOW_FAILED, backend.manifest.name, f"the shadow model failed inference: {exc}"[:200]))

    def confirm_shadow(self) -> None:
        """After the first connection: unload a persisted challenger whose retained message is gone."""
        for name in self.shadow_store.names():
            if self.shadow_store.read(name)["active"] is not None and name not in self._shadow_confirmed:
                self._queue.put((SHADOW, name, None))

    # --- trial, commit, rollback ---------------------------------------------------------------

    def _start_trial(self, d: DesiredModel, backend: InferenceBackend) -> None:
        name, task = d.model_name, d.manifest.task
        pipe = self.agent.pipeline
        with self._lock:
            old = self._serving(task)
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
            self.trials[task] = Trial(backend, old, d.msg_id, time.monotonic(), pipe.counts(old))
            self._install(task, old, backend, fallback=old)
        logger.info("model %s %s on trial (fallback %s)", name, d.version, old.manifest.version)
        self._report(name, d.version, backend.manifest.sha256, "trial")
        crash_point("swapped")
        if task == YIELD:
            # A new outlook from the new model now, not at the next scheduled run: it is also the
            # run the health window judges it by.
            self.agent._wake_for("yield")
        self.agent._next["model_health"] = time.monotonic() + min(1.0, self.settings.health_window_s)

    def _on_trial_failure(self, backend: InferenceBackend) -> bool:
        """A model failed a batch or run; True when it was on trial and has been rolled back."""
        with self._lock:
            for t in list(self.trials.values()):
                if t.backend is backend:
                    self._rollback(t, "the new model failed inference")
                    return True
        return False

    def check_health(self) -> float | None:
        """Called by the main loop during trials; returns seconds to the next check, None when done."""
        with self._lock:
            waits = [w for t in list(self.trials.values()) if (w := self._check_trial(t)) is not None]
        return min(waits) if waits else None

    def _check_trial(self, t: Trial) -> float | None:
        pipe = self.agent.pipeline
        total, failed = pipe.counts(t.backend)
        old_total, old_failed = pipe.counts(t.old)
        old_rate = old_failed / old_total if old_total else 0.0
        if total and failed / total > old_rate:
            self._rollback(t, f"error rate {failed}/{total} above the old model's {old_failed}/{old_total}")
            return None
        elapsed = time.monotonic() - t.started
        # health_min_images counts images; the yield model runs on a schedule, not per image.
        enough = t.task == YIELD or total >= self.settings.health_min_images
        if elapsed < self.settings.health_window_s or not enough:
            return max(0.2, min(5.0, self.settings.health_window_s - elapsed))
        try:
            self_test(t.backend.session, t.backend.manifest, t.backend.variant)  # type: ignore[attr-defined]
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
        self.trials.pop(t.task, None)
        # The old session is not closed here: the pipeline may still hold it as the fallback of a
        # batch in flight; it is freed with its last reference.
        self._install(t.task, t.old, t.backend)
        versions = self.store.version_dir(name, version).parent
        for old_dir in versions.iterdir() if versions.is_dir() else []:
            if old_dir.name not in keep:
                shutil.rmtree(old_dir, ignore_errors=True)
        logger.info("model %s %s committed after its health window", name, version)
        self._report(name, version, t.backend.manifest.sha256, "active")

    def _rollback(self, t: Trial, reason: str) -> None:
        name, version = t.backend.manifest.name, t.backend.manifest.version
        self._install(t.task, t.backend, t.old)
        state = self.store.read(name)
        state["failed"][version] = t.msg_id
        state.update(trial=None)
        state.pop("trial_msg_id", None)
        self.store.write(name, state)
        self.trials.pop(t.task, None)
        logger.warning("model %s %s rolled back to %s: %s", name, version, t.old.manifest.version, reason)
        self.agent.count_error("model_rolled_back")
        self._report(name, version, t.backend.manifest.sha256, "rolled_back", reason, level="warning")

    def model_state(self, backend: InferenceBackend) -> str:
        """The ``ActiveModel.state`` of a loaded model."""
        return "trial" if any(t.backend is backend for t in self.trials.values()) else "active"
