"""The agent: wiring of sources, pipeline, outbox, sender and transport, and the daemon's life.

Threads: one per source, the pipeline worker, the sender, paho's network thread and our MQTT
supervisor. The main thread sleeps on one event until the next timer (heartbeat, yield run, TTL
sweep, systemd watchdog) or a signal: SIGTERM/SIGINT stop, SIGHUP reloads. Nothing polls tightly,
so an idle agent uses next to no CPU.

Shutdown (SIGTERM): sources stop taking new work, the pipeline finishes what is queued and
stores its results, the sender gets what is left of the deadline to deliver, then the retained
status is set offline and the process exits. Whatever was not delivered is in the outbox; an
image not yet processed by a folder source is not marked seen, so it is processed after restart.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import re
import signal
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import shared
from shared.errors import ConfigError
from shared.ids import utcnow
from shared.manifest import TrustedKeys
from shared.messages import ActiveModel, Event, Health, Status
from shared.topics import command_topic, device_topic, fleet_model_topic, fleet_shadow_topic

from .commands import CommandActions, CommandHandler
from .config import AgentConfig, SourceSettings, load_agent_config
from .health import ProcessStats, disk_free_mb, temperature_c
from .inference import InferenceBackend, ModelLoadError, load_backend
from .logs import set_level
from .outbox import Outbox
from .pipeline import Identity, Pipeline, SamplePolicy, to_out
from .sender import Sender
from .sources import ImageItem, ReadingsItem, Source, build_source
from .systemd import Notifier
from .updater import ModelUpdater
from .yield_runner import YieldRunner

logger = logging.getLogger(__name__)

TTL_SWEEP_S = 60.0
AGENT_VERSION = shared.__version__


class AlreadyRunning(RuntimeError):
    pass


class InstanceLock:
    """One agent per data folder: an flock on ``data_dir/agent.lock`` (released by the kernel on exit)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "agent.lock"
        self._fh = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")  # noqa: SIM115 - held for the life of the process
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise AlreadyRunning(
                f"another agent (pid {holder}) is using data_dir {self.path.parent}; "
                "stop it or give this one its own data_dir"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


class _Ctx:
    """What sources see of the agent."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self.stop_event = agent._stopping

    def submit(self, item: ImageItem | ReadingsItem) -> bool:
        q = self._agent.pipeline.queue
        while not self.stop_event.is_set():
            try:
                q.put(item, timeout=1.0)
                return True
            except queue.Full:  # back-pressure: the source waits for the pipeline
                continue
        return False

    def is_seen(self, source: str, key: str) -> bool:
        return self._agent.outbox.is_seen(source, key)

    def claim(self, source: str, key: str) -> bool:
        """Reserve a file until its results are stored; survives a source restart on reload."""
        with self._agent._claims_lock:
            if (source, key) in self._agent._claims:
                return False
            self._agent._claims.add((source, key))
            return True

    def release(self, source: str, key: str) -> None:
        with self._agent._claims_lock:
            self._agent._claims.discard((source, key))

    def count_error(self, code: str) -> None:
        self._agent.count_error(code)


class Agent:
    def __init__(self, cfg: AgentConfig, config_path: Path | None = None, transport_factory=None) -> None:  # type: ignore[no-untyped-def]
        self.cfg = cfg
        self.config_path = config_path
        self.identity = Identity(cfg.device.farm_id, cfg.device.device_id, cfg.device.field_id)
        self.started_at = utcnow()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._reload_requested = False
        self.errors: Counter[str] = Counter()
        self._errors_lock = threading.Lock()
        self.lock = InstanceLock(cfg.data_dir)
        self.notifier = Notifier()
        self.stats = ProcessStats()
        self.sources: list[Source] = []
        self._waiting_sources: list[SourceSettings] = []
        self.models: list[InferenceBackend] = []
        self.yield_runner: YieldRunner | None = None
        self._transport_factory = transport_factory
        self.outbox: Outbox = None  # type: ignore[assignment]
        self.pipeline: Pipeline = None  # type: ignore[assignment]
        self.sender: Sender = None  # type: ignore[assignment]
        self.transport = None
        self.updater: ModelUpdater | None = None
        self._next: dict[str, float] = {}
        self._claims: set[tuple[str, str]] = set()
        self._claims_lock = threading.Lock()
        self._shadow_check_scheduled = False

    # --- helpers used by every part ---------------------------------------------------------

    def count_error(self, code: str) -> None:
        # Counter names travel as ids in the heartbeat: lower case, no odd characters.
        code = re.sub(r"[^a-z0-9_-]", "_", code.lower())[:64] or "unknown"
        with self._errors_lock:
            self.errors[code] += 1

    def event(self, level: str, code: str, message: str, details: dict | None = None) -> None:  # type: ignore[type-arg]
        msg = Event(**self.identity.envelope(), level=level, code=code, message=message, details=details or {})  # type: ignore[arg-type]
        self.outbox.add([to_out(self.identity, msg)])

    # --- start ------------------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.cfg
        self.lock.acquire()
        try:
            self.outbox = Outbox(
                cfg.data_dir / "outbox.sqlite3", int(cfg.outbox.budget_mb * 1e6), dict(cfg.outbox.ttl_s)
            )
            self.outbox.expire()
            self.samples = SamplePolicy(cfg.samples, self.outbox)
            top = cfg.models[0].top_k if cfg.models else 3
            self.pipeline = Pipeline(self.identity, self.outbox, self.samples, self.count_error, cfg.queue_size, top)
            self._load_models(cfg)
            self.updater = ModelUpdater(self)
            self.updater.boot()
            self.transport = self._make_transport()
            self.sender = Sender(self.outbox, self.transport, self.identity, cfg.outbox.max_inflight, self.count_error)
            handler = CommandHandler(
                cfg.device.farm_id,
                cfg.device.device_id,
                CommandActions(
                    capture_now=self.capture_now,
                    reload_config=self.request_reload,
                    set_log_level=set_level,
                    event=self.event,
                    count=self.count_error,
                ),
            )
            cmd_filter = command_topic(cfg.device.farm_id, cfg.device.device_id, "ping").rsplit("/", 1)[0] + "/+"
            self.transport.subscribe(cmd_filter, handler.handle, retained=False)
            # Retained: the desired model is state, and a device that was offline must still see it.
            fleet_filter = fleet_model_topic(cfg.device.farm_id, "any").rsplit("/", 1)[0] + "/+"
            self.transport.subscribe(fleet_filter, self.updater.on_message, retained=True)
            shadow_filter = fleet_shadow_topic(cfg.device.farm_id, "any").rsplit("/", 1)[0] + "/+"
            self.transport.subscribe(shadow_filter, self.updater.on_message, retained=True)
            self.updater.start()
            now = time.monotonic()
            # Timers before the transport starts: its connect callback adds the "online" one.
            self._next.update(heartbeat=now + cfg.heartbeat.interval_s, ttl=now + TTL_SWEEP_S)
            if self.yield_runner is not None:
                self._next["yield"] = now + min(cfg.yield_model.first_run_s, cfg.yield_model.interval_s)
            if self.notifier.watchdog_s:
                self._next["watchdog"] = now
            self.pipeline.start()
            self.sender.start()
            self.transport.start()
            self._start_sources(cfg)
        except BaseException:
            self.lock.release()
            raise
        self.notifier.ready(f"{len(self.models)} models, {len(self.sources)} sources")
        logger.info(
            "agent %s/%s started: %d models, %d sources, data in %s",
            cfg.device.farm_id, cfg.device.device_id, len(self.models), len(self.sources), cfg.data_dir,
        )  # fmt: skip

    def _make_transport(self):  # type: ignore[no-untyped-def]
        if self._transport_factory is not None:
            return self._transport_factory(self)
        from .transport import MqttTransport, Will

        cfg = self.cfg
        client_id = cfg.mqtt.client_id or f"cw-{cfg.device.farm_id}-{cfg.device.device_id}"[:128]
        return MqttTransport(
            cfg.mqtt,
            client_id,
            will=lambda: Will(self._status_topic(), self.status_message("offline", reason="connection lost").to_json()),
            on_connected=self._on_connected,
            on_error=self.count_error,
        )

    def _on_connected(self, session_present: bool) -> None:
        if not self._shadow_check_scheduled:
            self._shadow_check_scheduled = True
            self._next["shadow_confirm"] = time.monotonic() + self.cfg.updates.shadow_confirm_s
        self._wake_for("online")
        if self.sender is not None:
            self.sender.kick()

    def _load_models(self, cfg: AgentConfig) -> None:
        trusted = TrustedKeys.from_sources(cfg.trust.public_keys) if cfg.trust.public_keys else TrustedKeys()
        loaded: list[InferenceBackend] = []
        for ms in cfg.models:
            try:
                loaded.append(load_backend(ms, trusted, cfg.trust.require_signature))
            except ModelLoadError as exc:
                logger.error("model %s not loaded: %s", ms.manifest, exc)
                self.count_error(f"model_{exc.reason}"[:64])
                self.event("error", "model_rejected", f"model {ms.manifest.name} not loaded: {exc}"[:2000],
                           {"reason": exc.reason, "manifest": str(ms.manifest)[:512]})  # fmt: skip
        classifiers = [b for b in loaded if b.manifest.task == "disease_classification"]
        self.pipeline.set_models(
            classifiers[0] if classifiers else None, classifiers[1] if len(classifiers) > 1 else None
        )
        runner = None
        ym = cfg.yield_model
        if ym.enabled and ym.model is not None:
            try:
                backend = load_backend(ym.model, trusted, cfg.trust.require_signature)
                runner = YieldRunner(ym, backend, self.outbox, self.identity)
                loaded.append(backend)
            except (ModelLoadError, OSError, ValueError) as exc:
                logger.error("yield model not loaded: %s", exc)
                self.count_error("yield_model")
                self.event("error", "model_rejected", f"yield model not loaded: {exc}"[:2000], {})
        self.models = loaded
        self.yield_runner = runner

    def _start_sources(self, cfg: AgentConfig) -> None:
        self.sources = []
        self._waiting_sources = []
        for s in cfg.sources:
            if s.produces_images and self.pipeline.champion is None:
                # Over-the-air updates may bring the first model; until then images would pile up.
                logger.warning("source %s waits: no disease model loaded to process its images yet", s.name)
                self.count_error("source_without_model")
                self._waiting_sources.append(s)
                continue
            self._start_source(s)

    def _start_source(self, settings: SourceSettings) -> None:
        src = build_source(settings, _Ctx(self))
        src.start()
        self.sources.append(src)

    def start_waiting_sources(self) -> None:
        """Start the image sources that waited for a model (called when the first one is active)."""
        waiting, self._waiting_sources = self._waiting_sources, []
        for s in waiting:
            logger.info("source %s starts: a disease model is active now", s.name)
            self._start_source(s)

    # --- status -----------------------------------------------------------------------------

    def _status_topic(self) -> str:
        return device_topic(self.identity.farm_id, self.identity.device_id, "status")

    def health(self) -> Health:
        ob = self.outbox.stats()
        counters = self.outbox.counters()
        dropped = {k: v for k, v in counters.items() if k.startswith(("dropped_", "expired_"))}
        with self._errors_lock:
            errors = dict(self.errors.most_common(32))
        p50, p95 = self.pipeline.latency.percentiles()
        return Health(
            uptime_s=(utcnow() - self.started_at).total_seconds(),
            cpu_percent=round(self.stats.cpu_percent(), 3),
            memory_rss_mb=round(self.stats.rss_mb(), 1),
            disk_free_mb=disk_free_mb(self.cfg.data_dir),
            temperature_c=temperature_c(),
            outbox_depth=ob["depth"],
            outbox_oldest_age_s=ob["oldest_age_s"],
            outbox_refused=ob["refused"],
            dropped=dict(sorted(dropped.items())[:32]),
            errors=errors,
            inference_p50_ms=p50,
            inference_p95_ms=p95,
        )

    def status_message(self, state: str, reason: str | None = None, health: Health | None = None) -> Status:
        # An update in progress (or refused) comes before the serving model of the same name, so a
        # reader that keeps one row per model name (ingest's device_models) ends on the serving one.
        models = list(self.updater.pending.values()) if self.updater is not None else []
        models += [
            ActiveModel(
                name=b.manifest.name,
                version=b.manifest.version,
                sha256=b.manifest.file(b.variant).sha256,  # type: ignore[arg-type]
                variant=b.variant,  # type: ignore[arg-type]
                role="shadow" if b is self.pipeline.shadow else "champion",
                state=self.updater.model_state(b) if self.updater is not None else "active",  # type: ignore[arg-type]
            )
            for b in self.models
        ]
        return Status(
            **self.identity.envelope(),
            state=state,  # type: ignore[arg-type]
            since=self.started_at,
            agent_version=AGENT_VERSION,
            models=models,
            health=health,
            reason=reason,
        )

    def publish_status(self) -> None:
        """Retained status straight to the broker: only the latest matters, so it skips the outbox."""
        if self.transport is None or not self.transport.connected:
            return
        msg = self.status_message("online", health=self.health())
        self.transport.publish(self._status_topic(), msg.to_json(), qos=1, retain=True)

    # --- control ----------------------------------------------------------------------------

    def _wake_for(self, what: str) -> None:
        self._next[what] = 0.0
        self._wake.set()

    def request_stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def request_reload(self) -> None:
        self._reload_requested = True
        self._wake.set()

    def capture_now(self, source: str | None) -> list[str]:
        started = []
        for s in self.sources:
            if (source is None or s.name == source) and s.capture_now():
                started.append(s.name)
        return started

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
        signal.signal(signal.SIGINT, lambda *_: self.request_stop())
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())

    def run(self) -> int:
        """The main loop; returns when stopped."""
        while not self._stopping.is_set():
            now = time.monotonic()
            due = min(list(self._next.values()) or [now + 60])
            self._wake.wait(max(0.0, due - now))
            self._wake.clear()
            if self._stopping.is_set():
                break
            try:
                if self._reload_requested:
                    self._reload_requested = False
                    self.reload()
                self._timers()
            except Exception:
                # A failed heartbeat or reload must not end a daemon that is otherwise doing its job.
                logger.exception("main loop step failed; carrying on")
                self.count_error("main_loop")
        return 0

    def _timers(self) -> None:
        now = time.monotonic()
        if self._next.get("online", 1e18) <= now:
            self._next.pop("online", None)
            self.publish_status()
        if self._next.get("heartbeat", 1e18) <= now:
            self._next["heartbeat"] = now + self.cfg.heartbeat.interval_s
            self.publish_status()
        if self._next.get("ttl", 1e18) <= now:
            self._next["ttl"] = now + TTL_SWEEP_S
            self.outbox.expire()
            self.outbox.prune_state()
        if self._next.get("model_health", 1e18) <= now:
            self._next.pop("model_health", None)
            again = self.updater.check_health() if self.updater is not None else None
            if again is not None:
                self._next["model_health"] = now + again
        if self._next.get("shadow_confirm", 1e18) <= now:
            self._next.pop("shadow_confirm", None)
            if self.updater is not None:
                self.updater.confirm_shadow()
        if self._next.get("yield", 1e18) <= now:
            self._next["yield"] = now + self.cfg.yield_model.interval_s
            self.run_yield()
        if self._next.get("watchdog", 1e18) <= now and self.notifier.watchdog_s:
            self._next["watchdog"] = now + self.notifier.watchdog_s / 2
            # A stuck worker must not be hidden by a healthy main loop: let systemd restart us.
            if self.pipeline.alive() and self.sender.alive():
                self.notifier.watchdog()

    def set_yield_backend(self, backend: InferenceBackend, fallback: InferenceBackend | None = None) -> None:
        """Swap the yield runner's model (over-the-air updates); makes the runner if there was none."""
        if self.yield_runner is None:
            self.yield_runner = YieldRunner(self.cfg.yield_model, backend, self.outbox, self.identity)
            self._next.setdefault("yield", time.monotonic())
        self.yield_runner.set_backend(backend, fallback)

    def run_yield(self, now: datetime | None = None) -> None:
        runner = self.yield_runner
        if runner is None:
            return
        for _ in range(2):
            model = runner.snapshot()
            backend = model[0]
            try:
                estimate = runner.run(now, model)
            except Exception as exc:
                self.pipeline.count(backend, 1, 1)
                # A model on trial that fails its run is rolled back; the old one runs it again.
                if self.updater is not None and self.updater._on_trial_failure(backend):
                    logger.warning("yield model %s %s failed a run on trial; run again with the old one",
                                   backend.manifest.name, backend.manifest.version)  # fmt: skip
                    continue
                logger.exception("yield model run failed")
                self.count_error("yield_run")
                self.event("error", "yield_failed", f"yield model run failed: {exc}"[:2000])
                return
            self.pipeline.count(backend, 1, 0)
            self.outbox.add([to_out(self.identity, estimate)])
            return

    def reload(self) -> None:
        """Re-read the config file: log level, samples, sources and models change in place."""
        self.notifier.reloading()
        if self.config_path is None:
            self.sender.requeue()
            self.notifier.ready("reloaded")
            return
        try:
            new = load_agent_config(self.config_path)
        except ConfigError as exc:
            logger.error("reload refused, keeping the running config: %s", exc)
            self.event("error", "config_invalid", f"reload refused: {exc}"[:2000])
            self.notifier.ready("reload refused")
            return
        for section in ("device", "data_dir", "mqtt"):
            if getattr(new, section) != getattr(self.cfg, section):
                logger.warning("config section %s changed; it takes effect after a restart", section)
        set_level(new.log.level)
        self.samples.settings = new.samples
        for s in self.sources:
            s.stop()
        if new.models != self.cfg.models or new.yield_model != self.cfg.yield_model or new.trust != self.cfg.trust:
            self._load_models(new)
            if self.updater is not None:
                self.updater.boot()  # the committed over-the-air version still wins over the config's
            self._wake_for("online")
        self.cfg = self.cfg.model_copy(
            update={k: getattr(new, k) for k in ("models", "sources", "samples", "yield_model", "heartbeat", "log",
                                                  "trust", "outbox", "shutdown_deadline_s")}
        )  # fmt: skip
        self.outbox.ttl_s = dict(new.outbox.ttl_s)
        self.outbox.budget_bytes = int(new.outbox.budget_mb * 1e6)
        self._start_sources(self.cfg)
        requeued = self.sender.requeue()
        logger.info("config reloaded (%d refused messages put back in line)", requeued)
        self.event("info", "config_reloaded", "config reloaded", {"requeued": requeued})
        self.notifier.ready("reloaded")

    # --- stop -------------------------------------------------------------------------------

    def stop(self) -> None:
        deadline = time.monotonic() + self.cfg.shutdown_deadline_s
        self._stopping.set()
        self.notifier.stopping()
        logger.info("stopping: finishing queued work (deadline %.0f s)", self.cfg.shutdown_deadline_s)
        for s in self.sources:
            s.stop()
        if self.updater is not None:
            self.updater.stop()
        if self.pipeline is not None:
            left = self.pipeline.pending()
            if not self.pipeline.stop(max(0.1, (deadline - time.monotonic()) * 0.7)):
                logger.warning("deadline reached with about %d queued items unprocessed", left)
        if self.sender is not None:
            # Results are already safe in the outbox; delivering them now is a bonus within the deadline.
            self.sender.wait_idle(max(0.0, min(5.0, deadline - time.monotonic() - 1.0)))
            self.sender.stop(timeout=1.0)
        if self.transport is not None:
            offline = self.status_message("offline", reason="shutdown")
            self.transport.stop(last=(self._status_topic(), offline.to_json()), timeout=2.0)
        if self.outbox is not None:
            self.outbox.close()
        self.lock.release()
        logger.info("stopped")
