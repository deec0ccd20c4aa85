"""The challenger's lifecycle: loaded beside the champion, unloaded when its run ends or it fails.

Shadow models come on the farm's retained ``_fleet/shadow/{name}`` topic, go through the same
checks, download and self-test as a champion, and land in their own slots under
``data_dir/shadow/{name}/`` (``state.json`` ``{"active": v|null, "msg_id": ..., "failed": {...}}``),
so pruning the champion's versions never touches them. An empty retained payload on its topic, a
policy that no longer selects the device, or a failed inference unloads it. The champion is never
touched by any of it.
"""

from __future__ import annotations

import logging
import threading

from shared.messages import DesiredModel
from shared.rollout import selects

from ..inference import InferenceBackend, ModelLoadError
from .common import DISEASE, SHADOW, Reporter, UpdateRejected
from .host import UpdaterHost
from .loader import ModelLoader
from .policy import check_common, check_fresh, check_size
from .slots import SlotStore

logger = logging.getLogger(__name__)


class ShadowSlots:
    def __init__(
        self, host: UpdaterHost, store: SlotStore, loader: ModelLoader, report: Reporter, lock: threading.RLock
    ) -> None:
        self._host = host
        self.store = store
        self._loader = loader
        self._report = report
        self._lock = lock
        # The challenger loaded over the air (None: the config's second classifier, if any, is the shadow).
        self.backend: InferenceBackend | None = None
        self._config_shadow: InferenceBackend | None = None
        # Per model name: (msg_id, how it ended: a reject reason, "not_selected", "current", "active", "unloaded").
        self.outcome: dict[str, tuple[str, str]] = {}

    def boot(self) -> None:
        """Load the persisted challenger (a restart keeps a shadow run going without a new download)."""
        with self._lock:
            self._config_shadow = self._host.serving_shadow()
            self.backend = None
        for name in self.store.names():
            state = self.store.read(name)
            version = state["active"]
            if version is None:
                continue
            try:
                backend = self._loader.load(self.store.manifest_path(name, version))
            except ModelLoadError as exc:
                logger.error("shadow model %s %s in slot does not load (%s); no shadow runs", name, version, exc)
                state.update(active=None, msg_id=None)
                self.store.write_or_defer(name, state)
                self._report(name, version, None, "rejected", exc.reason, level="error", role=SHADOW)
                continue
            self._set(backend)
            logger.info("shadow model %s %s loaded from its slot", name, version)
            break

    def _set(self, backend: InferenceBackend | None) -> None:
        """Swap the challenger (None: back to the config's, if any); the champion is left as it is."""
        with self._lock:
            self.backend = backend
            self._host.install_shadow(backend if backend is not None else self._config_shadow)
        # The old challenger is not closed: the pipeline thread may still be inside a batch with it;
        # dropping the last reference frees its session once that batch is done.

    def vet(self, d: DesiredModel) -> None:
        name, version = d.model_name, d.version
        check_common(d, self._host.cfg, self._loader.trusted())
        if d.manifest.task != DISEASE:
            raise UpdateRejected("unsupported_task", f"shadow runs are for {DISEASE} models, not {d.manifest.task}")
        check_fresh(self.store, d, self._lock, closed=True)
        device = self._host.cfg.device
        if not selects(d.rollout, name, device.device_id, device.groups):
            raise UpdateRejected("not_selected", "this device is not in the shadow run")
        champion = self._host.serving(DISEASE)
        if champion is not None and champion.manifest.name != name:
            raise UpdateRejected("not_selected", f"this device runs {champion.manifest.name}, not {name}")
        current = self.backend
        if current is not None and current.manifest.name == name and current.manifest.version == version:
            state = self.store.read(name)
            state["msg_id"] = d.msg_id
            self.store.write(name, state)
            raise UpdateRejected("current", "this challenger is already running")
        if self.store.read(name)["failed"].get(version) == d.msg_id:
            raise UpdateRejected("current", "this challenger failed here; publish it again to retry")
        check_size(self._loader.artifacts(d), self._host.cfg)

    def start(self, d: DesiredModel, backend: InferenceBackend) -> None:
        name, version = d.model_name, d.version
        # State first, then the swap: a crash in between loads this challenger at boot, which is
        # what the message asked for.
        state = self.store.read(name)
        old = state["active"]
        state.update(active=version, msg_id=d.msg_id)
        self.store.write(name, state)
        self._set(backend)
        self.store.prune(name, keep={version})
        self.outcome[name] = (d.msg_id, "active")
        logger.info("shadow model %s %s runs beside the champion (was %s)", name, version, old or "none")
        self._report(name, version, backend.manifest.sha256, "active", role=SHADOW)

    def unload(self, name: str, reason: str, failed: bool = False) -> None:
        with self._lock:
            state = self.store.read(name)
            version = state["active"]
            backend = self.backend
            loaded = backend is not None and backend.manifest.name == name
            if version is None and not loaded:
                return
            if backend is not None and loaded:
                version = backend.manifest.version
                self._set(None)
            if failed and version is not None:
                state["failed"][version] = state.get("msg_id") or "unknown"
            if reason == "shadow_ended" and state.get("newest_msg_id"):
                # The run's own signed message replayed after the end must not start it again.
                state["closed_msg_id"] = state["newest_msg_id"]
            state.update(active=None, msg_id=None)
            # Unloaded already; a full disk defers the state (until written, a restart would load
            # the challenger again and its retained message decide).
            if self.store.write_or_defer(name, state):
                self.store.prune(name, keep=set())
        self.outcome[name] = (self.outcome.get(name, ("", ""))[0], "unloaded")
        sha = backend.manifest.sha256 if loaded and backend is not None else None
        if failed:
            logger.warning("shadow model %s %s unloaded: %s", name, version, reason)
            self._host.count_error("shadow_rolled_back")
            self._report(name, version or "0", sha, "rolled_back", reason, level="warning", role=SHADOW)
        else:
            logger.info("shadow model %s %s unloaded: %s", name, version, reason)
            self._report(name, version or "0", sha, "unloaded", reason, role=SHADOW)

    def loaded(self, name: str) -> bool:
        """Whether the challenger loaded now is of model ``name``."""
        with self._lock:
            return self.backend is not None and self.backend.manifest.name == name
