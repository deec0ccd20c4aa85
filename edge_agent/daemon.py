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

import logging
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Literal

from shared.errors import ConfigError
from shared.ids import utcnow
from shared.manifest import TrustedKeys
from shared.messages import Event, EventValue, Health, LogLevel, Status
from shared.topics import command_topic, fleet_model_topic, fleet_shadow_topic

from .commands import CommandActions, CommandHandler
from .config import AgentConfig, load_agent_config
from .health import ProcessStats, heartbeat
from .inference import InferenceBackend, ModelLoadError, load_backend
from .ledger import Ledger
from .lock import InstanceLock
from .logs import set_level
from .outbox import Outbox
from .pipeline import Identity, Pipeline, to_out
from .sampling import SamplePolicy
from .sender import Sender, Transport
from .source_context import AgentSourceContext
from .sources import Source, SourceSettings, build_source
from .status import build_status, listed_models, status_topic
from .systemd import Notifier
from .updater import ModelUpdater
from .uplink.budget import message_wire_size
from .uplink.runtime import Uplink, open_outbox
from .yield_runner import YieldRunner

logger = logging.getLogger(__name__)

TTL_SWEEP_S = 60.0


class Agent:
    def __init__(
        self,
        cfg: AgentConfig,
        config_path: Path | None = None,
        transport_factory: Callable[[Agent], Transport] | None = None,
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.identity = Identity(cfg.device.farm_id, cfg.device.device_id, cfg.device.field_id)
        self.started_at = utcnow()
        # Uptime on the monotonic clock: a device clock set back (NTP, the soak's clock jump) made
        # it negative, and the status heartbeat failed validation until the clock came back.
        self._started_mono = time.monotonic()
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
        # Made by start(), which every other method comes after (stop() included).
        self.outbox: Outbox
        self.samples: SamplePolicy
        self.pipeline: Pipeline
        self.sender: Sender
        self._source_ctx: AgentSourceContext
        self.transport: Transport | None = None
        self.updater: ModelUpdater | None = None
        self.uplink: Uplink
        self._next: dict[str, float] = {}
        self._shadow_check_scheduled = False

    # --- helpers used by every part ---------------------------------------------------------

    def count_error(self, code: str) -> None:
        # Counter names travel as ids in the heartbeat: lower case, no odd characters.
        code = re.sub(r"[^a-z0-9_-]", "_", code.lower())[:64] or "unknown"
        with self._errors_lock:
            self.errors[code] += 1

    def event(self, level: LogLevel, code: str, message: str, details: dict[str, EventValue] | None = None) -> None:
        msg = Event(**self.identity.envelope(), level=level, code=code, message=message, details=details or {})
        self.outbox.add([to_out(self.identity, msg)])

    # --- start ------------------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.cfg
        self.lock.acquire()
        try:
            ledger = Ledger(cfg.debug.ledger_path) if cfg.debug.ledger_path else None
            self.uplink, self.outbox = open_outbox(cfg, {str(k): v for k, v in cfg.outbox.ttl_s.items()}, ledger=ledger)
            self.outbox.expire()
            self.samples = SamplePolicy(cfg.samples, self.outbox)
            top = cfg.models[0].top_k if cfg.models else 3
            self.pipeline = Pipeline(self.identity, self.outbox, self.samples, self.count_error, cfg.queue_size, top)
            self.uplink.attach(self.pipeline)
            self._source_ctx = AgentSourceContext(
                self._stopping, self.pipeline.queue, self.outbox, self.count_error, self.uplink.power.allow
            )
            self._load_models(cfg)
            self.updater = ModelUpdater(self)
            self.pipeline.on_model_failure = self.updater.on_model_failure
            self.pipeline.on_shadow_failure = self.updater.on_shadow_failure
            self.updater.boot()
            self.transport = transport = self._make_transport()
            self.sender = Sender(
                self.outbox, transport, self.identity, cfg.outbox.max_inflight, self.count_error, cfg.uplink,
                retry_no_subscribers=cfg.outbox.retry_no_subscribers, hold_acked_s=cfg.outbox.hold_acked_s,
            )  # fmt: skip
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
            transport.subscribe(cmd_filter, handler.handle, retained=False)
            # Retained: the desired model is state, and a device that was offline must still see it.
            fleet_filter = fleet_model_topic(cfg.device.farm_id, "any").rsplit("/", 1)[0] + "/+"
            transport.subscribe(fleet_filter, self.updater.on_message, retained=True)
            shadow_filter = fleet_shadow_topic(cfg.device.farm_id, "any").rsplit("/", 1)[0] + "/+"
            transport.subscribe(shadow_filter, self.updater.on_message, retained=True)
            self.updater.start()
            now = time.monotonic()
            # Timers before the transport starts: its connect callback adds the "online" one.
            self._next.update(heartbeat=now + self.uplink.heartbeat_s, ttl=now + TTL_SWEEP_S)
            if self.yield_runner is not None:
                self._next["yield"] = now + min(cfg.yield_model.first_run_s, cfg.yield_model.interval_s)
            if self.notifier.watchdog_s:
                self._next["watchdog"] = now
            self.pipeline.start()
            self.sender.start()
            transport.start()
            self._start_sources(cfg)
        except BaseException:
            self.lock.release()
            raise
        self.notifier.ready(f"{len(self.models)} models, {len(self.sources)} sources")
        logger.info(
            "agent %s/%s started: %d models, %d sources, data in %s",
            cfg.device.farm_id, cfg.device.device_id, len(self.models), len(self.sources), cfg.data_dir,
        )  # fmt: skip

    def _make_transport(self) -> Transport:
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
            wire_settings=cfg.uplink,
        )

    def _on_connected(self, session_present: bool) -> None:
        if not self._shadow_check_scheduled:
            self._shadow_check_scheduled = True
            self._next["shadow_confirm"] = time.monotonic() + self.cfg.updates.shadow_confirm_s
        self._wake_for("online")
        if self.sender is not None:
            self.sender.on_connected()

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
        src = build_source(settings, self._source_ctx)
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
        return status_topic(self.identity)

    def health(self) -> Health:
        with self._errors_lock:
            errors = dict(self.errors.most_common(32))
        uptime_s = time.monotonic() - self._started_mono
        latency = self.pipeline.latency.percentiles()
        return heartbeat(self.stats, self.outbox, errors, latency, self.cfg.data_dir, uptime_s)

    def status_message(
        self, state: Literal["online", "offline"], reason: str | None = None, health: Health | None = None
    ) -> Status:
        models = listed_models(self.models, self.pipeline.shadow, self.updater)
        return build_status(
            self.identity, state, self.started_at, models, self.uplink.next_contact_at(), reason=reason, health=health
        )

    def publish_status(self, force: bool = False) -> None:
        """Retained status straight to the broker: only the latest matters, so it skips the outbox."""
        if self.transport is None or not self.transport.connected:
            return
        msg = self.status_message("online", health=self.health())
        if self.uplink.status_due(msg, force=force):
            payload = msg.to_json()
            self.transport.publish(self._status_topic(), payload, qos=1, retain=True)
            self.outbox.charge(message_wire_size(self._status_topic(), payload, self.cfg.uplink))

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
            self.publish_status(force=True)
        if self._next.get("heartbeat", 1e18) <= now:
            self._next["heartbeat"] = now + self.uplink.heartbeat_s
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
                if self.updater is not None and self.updater.on_model_failure(backend):
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
        for section in ("device", "data_dir", "mqtt", "uplink", "power"):
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
        self.outbox.ttl_s = {str(k): v for k, v in new.outbox.ttl_s.items()}
        self.outbox.budget_bytes = int(new.outbox.budget_mb * 1e6)
        self._start_sources(self.cfg)
        requeued = self.sender.requeue()
        logger.info("config reloaded (%d refused messages put back in line)", requeued)
        self.event("info", "config_reloaded", "config reloaded", {"requeued": requeued})
        self.notifier.ready("reloaded")

    # --- what the model updater sees of the agent (edge_agent.updater.UpdaterHost) ------------

    def serving(self, task: str) -> InferenceBackend | None:
        if task == "yield_forecast":
            return self.yield_runner.backend if self.yield_runner is not None else None
        return self.pipeline.champion

    def serving_shadow(self) -> InferenceBackend | None:
        return self.pipeline.shadow

    def model_counts(self, backend: InferenceBackend) -> tuple[int, int]:
        return self.pipeline.counts(backend)

    def _listed_without(self, *gone: InferenceBackend | None) -> list[InferenceBackend]:
        # A trial's fallback stays loaded but is not listed: the status shows what serves.
        return [m for m in self.models if all(m is not g for g in gone)]

    def install_champion(
        self, new: InferenceBackend, old: InferenceBackend | None, fallback: InferenceBackend | None = None
    ) -> None:
        self.models = [new, *self._listed_without(old, new, fallback)]
        self.pipeline.set_models(new, self.pipeline.shadow, fallback=fallback)
        if old is None:
            # Image sources wait for a first model (a device provisioned without one).
            self.start_waiting_sources()

    def install_yield(
        self, new: InferenceBackend, old: InferenceBackend | None, fallback: InferenceBackend | None = None
    ) -> None:
        self.models = [*self._listed_without(old, new, fallback), new]
        if self.yield_runner is None:
            self.yield_runner = YieldRunner(self.cfg.yield_model, new, self.outbox, self.identity)
            self._next.setdefault("yield", time.monotonic())
        self.yield_runner.set_backend(new, fallback)

    def install_shadow(self, new: InferenceBackend | None) -> None:
        listed = self._listed_without(self.pipeline.shadow, new)
        self.models = [*listed, new] if new is not None else listed
        self.pipeline.set_shadow(new)

    def publish_status_soon(self) -> None:
        self._wake_for("online")

    def run_yield_soon(self) -> None:
        self._wake_for("yield")

    def check_models_in(self, delay_s: float) -> None:
        self._next["model_health"] = time.monotonic() + delay_s

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
        left = self.pipeline.pending()
        if not self.pipeline.stop(max(0.1, (deadline - time.monotonic()) * 0.7)):
            logger.warning("deadline reached with about %d queued items unprocessed", left)
        # Results are already safe in the outbox; delivering them now is a bonus within the deadline.
        self.sender.wait_idle(max(0.0, min(5.0, deadline - time.monotonic() - 1.0)))
        self.sender.stop(timeout=1.0)
        if self.transport is not None:
            offline = self.status_message("offline", reason="shutdown")
            self.transport.stop(last=(self._status_topic(), offline.to_json()), timeout=2.0)
        self.outbox.close()
        self.lock.release()
        logger.info("stopped")
