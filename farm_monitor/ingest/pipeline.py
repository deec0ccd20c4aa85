"""The ingest pipeline: validate, batch, write idempotently, then acknowledge.

The transport hands every PUBLISH to :meth:`Ingestor.submit` without acknowledging it (from its
``poll``, which :meth:`Ingestor.run` calls on its own thread: one thread does it all). ``run``
takes batches bounded by size and time, validates each payload against the shared schemas and
its topic, writes all rows of the batch plus its dead letters in one transaction (``INSERT ...
ON CONFLICT DO NOTHING`` keyed on ``msg_id``), and only after the commit asks the transport to
send the PUBACKs. A crash anywhere before the commit leaves the messages unacknowledged, so the
broker redelivers them; the unique keys make the redelivery a no-op when the commit did happen.

A PUBLISH's content type picks its decoding (shared/wire.py): JSON (also when there is none), CBOR,
or a batch of CBOR messages; a batch is one item (one PUBACK) that yields many rows.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import InterfaceError, OperationalError

from shared import messages as m, wire
from shared.errors import MessageError, TopicError
from shared.messages import GATEWAY_KINDS
from shared.topics import Topic, parse_topic

from ..config import MonitorConfig
from ..db.dialect import Dialect
from ..db.retention import prune
from . import rows as r
from .alerts import AlertEngine
from .metrics import Metrics

logger = logging.getLogger(__name__)

# (topic, payload, mid, qos, connection generation, monotonic receive time[, content type])
Item = tuple[Any, ...]
AckFn = Callable[[list[Item]], None]

_TOPIC_CACHE_MAX = 50_000
# The database cannot be reached: retry the same batch later, never dead-letter it.
_OUTAGE = (OperationalError, InterfaceError)
# Where the device upsert finds the status_reports values it reuses.
_STATUS = {name: i for i, name in enumerate(r.COLUMNS["status_reports"])}
_ST_SINCE, _ST_MODELS, _ST_HEALTH = (_STATUS[c] for c in ("since", "models", "health"))


@dataclass
class Batch:
    rows: dict[str, list[r.Row]] = field(default_factory=lambda: defaultdict(list))
    seen: dict[tuple[str, str], Any] = field(default_factory=dict)  # (farm, device) -> received
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    # message, received, row, and the time that orders it (observed_at, never ahead of arrival)
    statuses: list[tuple[m.Status, Any, r.Row, Any]] = field(default_factory=list)
    telemetry: list[m.Telemetry] = field(default_factory=list)
    fields: set[tuple[str, str]] = field(default_factory=set)
    dead: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    received: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    encodings: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # PUBLISHes per content type
    newest_observed: datetime | None = None


class Ingestor:
    def __init__(self, config: MonitorConfig, engine: Engine, metrics: Metrics, ack: AckFn | None = None) -> None:
        self.cfg = config
        self.engine = engine
        self.metrics = metrics
        self.ack = ack
        self.d = Dialect(engine)
        self.alerts = AlertEngine(config.alerts, self.d, metrics)
        self._sql = {table: self.d.insert_ignore(table) for table in r.COLUMNS}
        self._sql_seen, self._sql_status, self._sql_models = self._device_sql()
        self._sql_stale_shadow = self._stale_shadow_sql()
        self._pending: list[Item] = []
        self._topics: dict[str, Topic | TopicError] = {}
        self._last_dead_log: dict[str, float] = {}
        self._suppressed: dict[str, int] = defaultdict(int)
        self._dirty_fields: set[tuple[str, str]] = set()
        self._last_alert_eval = float("-inf")
        self._last_prune = float("-inf")
        self.last_commit: float | None = None
        self._started = time.monotonic()
        self.db_ok = True
        self.batches = 0

    # --- called by the transport (from poll, on the ingest thread) ------------------------------

    def submit(
        self, topic: str, payload: bytes, mid: int, qos: int, generation: int, content_type: str | None = None
    ) -> None:
        self._pending.append((topic, payload, mid, qos, generation, time.monotonic(), content_type))

    def pending(self) -> int:
        return len(self._pending)

    def oldest_pending_age(self) -> float:
        pending = self._pending
        return time.monotonic() - pending[0][5] if pending else 0.0

    # --- the loop --------------------------------------------------------------------------------

    def _due(self, stopping: bool) -> bool:
        pending = self._pending
        if not pending:
            return False
        if stopping or len(pending) >= self.cfg.ingest.batch_max_messages:
            return True
        return time.monotonic() - pending[0][5] >= self.cfg.ingest.batch_max_s

    def _take(self) -> list[Item]:
        limit = self.cfg.ingest.batch_max_messages
        batch, self._pending = self._pending[:limit], self._pending[limit:]
        return batch

    def run(self, stop: threading.Event, poll: Callable[[float], None]) -> None:
        """Pump the transport and commit batches until ``stop`` is set and all received is committed.

        ``poll(timeout)`` runs the transport, which calls :meth:`submit` for each message.
        """
        max_s = self.cfg.ingest.batch_max_s
        while True:
            stopping = stop.is_set()
            if not stopping:
                age = self.oldest_pending_age()
                poll(max(0.0, min(max_s - age, 0.05)) if self._pending else 0.1)
            if self._due(stopping) and not self.process(self._take(), stop, poll):
                return  # stopping while the database is down: leave the rest to redelivery
            self.periodic()
            if stopping and not self._pending:
                self.periodic(force_alerts=True)
                return

    def _wait(self, seconds: float, stop: threading.Event | None, poll: Callable[[float], None] | None) -> bool:
        """Wait while keeping the connection alive; True if asked to stop."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if stop is not None and stop.is_set():
                return True
            if poll is not None:
                poll(min(left, 0.1))
            else:
                time.sleep(min(left, 0.1))
        return stop is not None and stop.is_set()

    def process(
        self, items: list[Item], stop: threading.Event | None = None, poll: Callable[[float], None] | None = None
    ) -> bool:
        """Validate, commit and acknowledge one batch, retrying while the database is unavailable."""
        t0 = time.perf_counter()
        batch = self.prepare(items)
        delay = self.cfg.ingest.retry_min_s
        split = False
        while True:
            try:
                if split:
                    self._commit_one_by_one(items, batch)
                else:
                    self._commit(batch)
                break
            except _OUTAGE:
                self.db_ok = False
                self.metrics.inc("cropwatch_ingest_db_errors_total")
                logger.exception("database unavailable; retrying batch of %d in %.1f s", len(items), delay)
            except Exception:
                # One message the database (or a bug) refuses must not poison the batch: store
                # message by message and keep the refused one as a dead letter.
                self.metrics.inc("cropwatch_ingest_db_errors_total")
                logger.exception("a batch of %d failed; writing it one message at a time", len(items))
                split = True
                continue
            if self._wait(delay, stop, poll):
                logger.warning("stopping with %d uncommitted messages; the broker will redeliver them", len(items))
                return False
            delay = min(delay * 2, self.cfg.ingest.retry_max_s)
        self.db_ok = True
        self._acknowledge(items)
        self._account(items, batch, time.perf_counter() - t0)
        return True

    def _acknowledge(self, items: list[Item]) -> None:
        if self.ack is not None:
            self.ack(items)

    def _account(self, items: list[Item], batch: Batch, seconds: float) -> None:
        mt = self.metrics
        now_mono = time.monotonic()
        self.batches += 1
        self.last_commit = now_mono
        mt.observe_batch(seconds)
        for kind, n in batch.received.items():
            mt.inc("cropwatch_ingest_received_total", n, kind=kind)
        for reason, n in batch.dead.items():
            mt.inc("cropwatch_ingest_dead_letters_total", n, reason=reason)
        for ctype, n in batch.encodings.items():
            mt.inc("cropwatch_ingest_publishes_total", n, content_type=ctype)
        mt.set("cropwatch_ingest_lag_seconds", now_mono - items[0][5])
        if batch.newest_observed is not None:
            mt.set(
                "cropwatch_ingest_observed_lag_seconds",
                max(0.0, (datetime.now(UTC) - batch.newest_observed).total_seconds()),
            )
        mt.set("cropwatch_ingest_pending_messages", self.pending())

    # --- validation ------------------------------------------------------------------------------

    def _topic(self, topic: str) -> Topic | TopicError:
        parsed = self._topics.get(topic)
        if parsed is None:
            try:
                parsed = parse_topic(topic)
            except TopicError as err:
                parsed = err
            if len(self._topics) >= _TOPIC_CACHE_MAX:
                self._topics.clear()  # random topics from a misbehaving client must not grow memory
            self._topics[topic] = parsed
        return parsed

    def prepare(self, items: list[Item]) -> Batch:
        batch = Batch()
        received = self.d.ts(batch.received_at)
        for item in items:
            topic, payload = item[0], item[1]
            content_type = item[6] if len(item) > 6 else None
            parsed = self._topic(topic)
            if isinstance(parsed, TopicError):
                self._dead(batch, topic, payload, "bad_topic", str(parsed), None, received)
                continue
            if parsed.category != "device":
                self._dead(batch, topic, payload, "bad_topic", "not a device-to-cloud topic", parsed, received)
                continue
            kind = parsed.kind or ""
            ctype = wire.base_type(content_type)
            batch.encodings[ctype if ctype in wire.CONTENT_TYPES else "other"] += 1
            try:
                decoded = wire.decode(payload, content_type, kind)
            except MessageError as err:
                self._dead(batch, topic, payload, err.reason, str(err), parsed, received)
                continue
            except Exception as exc:  # the contract raises only MessageError; anything else is a bug
                logger.exception("decoding a payload on %s failed unexpectedly", topic)
                self._dead(batch, topic, payload, "internal_error", repr(exc)[:500], parsed, received)
                continue
            for msg, raw in decoded:
                self._add(batch, topic, raw, msg, parsed, kind, received)
        return batch

    def _add(self, batch: Batch, topic: str, payload: bytes, msg: Any, parsed: Topic, kind: str, received: Any) -> None:
        """One decoded message (or its error) into the batch: rows, side effects, or a dead letter."""
        if isinstance(msg, MessageError):
            self._dead(batch, topic, payload, msg.reason, str(msg), parsed, received)
            return
        if msg.farm_id != parsed.farm_id or msg.device_id != parsed.device_id:
            self._dead(
                batch, topic, payload, "topic_mismatch",
                f"payload says {msg.farm_id}/{msg.device_id} but was published on {topic}; "
                "a device may publish only under its own ids",
                parsed, received,
            )  # fmt: skip
            return
        spec = r.KINDS.get(kind)
        if spec is None:
            self._dead(batch, topic, payload, "unknown_kind", f"ingest stores no {kind!r} messages", parsed, received)
            return
        try:
            built = spec.rows(self.d, msg, received)
            parts = spec.part_rows(self.d, msg, received)
        except Exception as exc:  # a bug here must cost one message, not the daemon
            logger.exception("could not turn a valid %s message into rows", kind)
            self._dead(batch, topic, payload, "internal_error", repr(exc)[:500], parsed, received)
            return
        batch.rows[spec.table.name].extend(built)
        for table, row in parts:
            batch.rows[table].append(row)
        # Beyond storing: detections feed the disease alert, statuses the devices table.
        if kind == "detection" and msg.field_id is not None:
            batch.fields.add((msg.farm_id, msg.field_id))
        elif kind == "status":
            # A device whose clock ran ahead must not freeze its row: a status stamped three hours
            # ahead would otherwise outrank every real one (models, state, heartbeat) for three hours
            # (found by the chaos soak). The history table keeps what the device said.
            order_at = min(msg.observed_at, batch.received_at)
            batch.statuses.append((msg, received, built[0], self.d.ts(order_at)))
        elif kind == "telemetry":
            batch.telemetry.append(msg)
        batch.received[kind] += 1
        if kind not in GATEWAY_KINDS:  # a farm gateway is not a field device: it has the Farms page
            batch.seen[(msg.farm_id, msg.device_id)] = received
        obs = msg.observed_at
        if batch.newest_observed is None or obs > batch.newest_observed:
            batch.newest_observed = obs

    def _dead(
        self, batch: Batch, topic: str, payload: bytes, reason: str, detail: str, parsed: Topic | None, received: Any
    ) -> None:
        batch.dead[reason] += 1
        batch.received["invalid"] += 1
        digest = hashlib.sha256(topic.encode("utf-8", "replace") + b"\0" + payload).hexdigest()
        keep = payload[: self.cfg.ingest.dead_letter_max_bytes]
        batch.rows[r.DEAD_LETTERS.name].append(
            r.dead_letter_row({
                "digest": digest, "received_at": received, "topic": topic[:1024],
                "farm_id": parsed.farm_id if parsed else None, "device_id": parsed.device_id if parsed else None,
                "reason": reason, "detail": detail[:2000], "payload_size": len(payload), "payload": keep,
            })
        )  # fmt: skip
        now = time.monotonic()
        interval = self.cfg.ingest.dead_letter_log_interval_s
        last = self._last_dead_log.get(reason)
        if last is None or now - last >= interval:
            extra = self._suppressed.pop(reason, 0)
            logger.warning(
                "dead letter (%s) on %s: %s%s",
                reason, topic[:200], detail[:300], f" [{extra} more like it not logged]" if extra else "",
            )  # fmt: skip
            self._last_dead_log[reason] = now
        else:
            self._suppressed[reason] += 1

    # --- writing ---------------------------------------------------------------------------------

    def _device_sql(self) -> tuple[str, str, str]:
        p = self.d.ph
        seen = (
            f"INSERT INTO devices (farm_id, device_id, first_seen_at, last_seen_at) VALUES ({p}, {p}, {p}, {p}) "
            "ON CONFLICT (farm_id, device_id) DO UPDATE SET "
            "first_seen_at = COALESCE(devices.first_seen_at, excluded.first_seen_at), "
            "last_seen_at = CASE WHEN devices.last_seen_at IS NULL OR excluded.last_seen_at > devices.last_seen_at "
            "THEN excluded.last_seen_at ELSE devices.last_seen_at END"
        )
        cols = (
            "farm_id, device_id, state, state_since, status_observed_at, last_heartbeat_at, agent_version, "
            "models, health, reason, next_contact_at"
        )
        # Newer status wins; the last will (offline) is composed when the device connected, so it
        # is older than the heartbeats before it and must win over an online state anyway.
        status = (
            f"INSERT INTO devices ({cols}) VALUES ({', '.join([p] * 11)}) "
            "ON CONFLICT (farm_id, device_id) DO UPDATE SET "
            "state_since = CASE WHEN devices.state = excluded.state THEN devices.state_since "
            "ELSE excluded.state_since END, "
            "state = excluded.state, status_observed_at = excluded.status_observed_at, "
            "last_heartbeat_at = CASE WHEN excluded.state = 'online' THEN excluded.status_observed_at "
            "ELSE devices.last_heartbeat_at END, "
            "agent_version = excluded.agent_version, models = excluded.models, "
            "health = COALESCE(excluded.health, devices.health), reason = excluded.reason, "
            "next_contact_at = excluded.next_contact_at "
            "WHERE devices.status_observed_at IS NULL OR excluded.status_observed_at > devices.status_observed_at "
            "OR (excluded.state = 'offline' AND devices.state = 'online')"
        )
        models = (
            "INSERT INTO device_models (farm_id, device_id, model_name, role, active_version, active_sha256, "
            f"active_variant, state, state_since, reported_at) VALUES ({', '.join([p] * 10)}) "
            "ON CONFLICT (farm_id, device_id, model_name, role) DO UPDATE SET "
            "state_since = CASE WHEN COALESCE(device_models.active_version, '') = excluded.active_version "
            "AND COALESCE(device_models.state, '') = excluded.state "
            "THEN COALESCE(device_models.state_since, excluded.state_since) ELSE excluded.state_since END, "
            "active_version = excluded.active_version, active_sha256 = excluded.active_sha256, "
            "active_variant = excluded.active_variant, state = excluded.state, reported_at = excluded.reported_at "
            "WHERE device_models.reported_at IS NULL OR excluded.reported_at > device_models.reported_at"
        )
        return seen, status, models

    def _stale_shadow_sql(self) -> str:
        p = self.d.ph
        # A heartbeat lists every model the device runs; a shadow row it did not refresh belongs
        # to a shadow run that ended (its reported_at is older than this status). A row that
        # rollout still wants (desired_version set) stays: the device may not have loaded it yet.
        return (
            f"DELETE FROM device_models WHERE farm_id = {p} AND device_id = {p} AND role = 'shadow' "
            f"AND desired_version IS NULL AND reported_at < {p}"
        )

    def _commit(self, batch: Batch) -> None:
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            for table, rows in batch.rows.items():
                if rows:
                    stored = self._insert(conn, table, rows)
                    if table != r.DEAD_LETTERS.name and stored >= 0:
                        self.metrics.inc("cropwatch_ingest_stored_rows_total", stored, table=table)
            if batch.statuses:
                status_rows = []
                model_rows = []
                for st, received, row, observed in batch.statuses:  # arrival order: a last will after heartbeats
                    models_json, health = row[_ST_MODELS], row[_ST_HEALTH]
                    since = row[_ST_SINCE] if st.state == "online" else received
                    status_rows.append(
                        (
                            st.farm_id, st.device_id, st.state, since, observed,
                            observed if st.state == "online" else None, st.agent_version, models_json, health,
                            st.reason, self.d.ts(st.next_contact_at) if st.next_contact_at else None,
                        )
                    )  # fmt: skip
                    for a in st.models:
                        model_rows.append(
                            (
                                st.farm_id, st.device_id, a.name, a.role, a.version, a.sha256, a.variant, a.state,
                                observed, observed,
                            )
                        )  # fmt: skip
                conn.exec_driver_sql(self._sql_status, status_rows)
                if model_rows:
                    conn.exec_driver_sql(self._sql_models, model_rows)
                online = [
                    (st.farm_id, st.device_id, observed)
                    for st, _, _, observed in batch.statuses
                    if st.state == "online"
                ]
                if online:
                    conn.exec_driver_sql(self._sql_stale_shadow, online)
                self.alerts.on_statuses(conn, [s for s, _, _, _ in batch.statuses], now)
            if batch.telemetry:
                self.alerts.on_telemetry(conn, batch.telemetry, now)
            if batch.seen:
                conn.exec_driver_sql(
                    self._sql_seen, [(f, dev, rec, rec) for (f, dev), rec in sorted(batch.seen.items())]
                )
        self._dirty_fields |= batch.fields

    def _insert(self, conn: Connection, table: str, rows: list[r.Row]) -> int:
        """Insert rows ignoring duplicates; returns rows inserted (-1 when the driver cannot tell).

        Measured on PostgreSQL: executemany (pipelined by psycopg 3), COPY into a staging table
        and multi-row VALUES were no faster; see docs/ingest.md.
        """
        return conn.exec_driver_sql(self._sql[table], rows).rowcount

    def _commit_one_by_one(self, items: list[Item], batch: Batch) -> None:
        """Commit each message alone; one that still fails becomes a ``db_rejected`` dead letter."""
        for item in items:
            single = self.prepare([item])
            try:
                self._commit(single)
            except _OUTAGE:
                raise
            except Exception as exc:
                topic, payload = item[0], item[1]
                logger.exception("could not store the message on %s; keeping it as a dead letter", topic)
                detail = str(getattr(exc, "orig", None) or exc)[:500]
                dead = Batch()
                parsed = self._topic(topic)
                where = parsed if isinstance(parsed, Topic) else None
                self._dead(dead, topic, payload, "db_rejected", detail, where, self.d.ts(datetime.now(UTC)))
                self._commit(dead)
                batch.dead["db_rejected"] += 1

    # --- periodic jobs ---------------------------------------------------------------------------

    def periodic(self, force_alerts: bool = False) -> None:
        now_mono = time.monotonic()
        acfg = self.cfg.alerts
        try:
            if force_alerts or now_mono - self._last_alert_eval >= acfg.evaluate_every_s:
                self._last_alert_eval = now_mono
                fields, self._dirty_fields = self._dirty_fields, set()
                now = datetime.now(UTC)
                # Right after a restart every device looks silent until the broker's backlog is in;
                # judge silence only once ingest itself has been listening that long.
                listening = now_mono - self._started >= acfg.device_offline.after_s
                with self.engine.begin() as conn:
                    self.alerts.evaluate_disease(conn, fields, now)
                    if listening:
                        self.alerts.evaluate_offline(conn, now)
        except Exception:
            self.metrics.inc("cropwatch_ingest_job_errors_total", job="alerts")
            logger.exception("alert evaluation failed; will try again")
        rcfg = self.cfg.retention
        try:
            if rcfg.interval_s > 0 and now_mono - self._last_prune >= rcfg.interval_s:
                self._last_prune = now_mono
                deleted = prune(self.engine, rcfg, datetime.now(UTC))
                for table, n in deleted.items():
                    if n:
                        self.metrics.inc("cropwatch_pruned_rows_total", n, table=table)
        except Exception:
            self.metrics.inc("cropwatch_ingest_job_errors_total", job="retention")
            logger.exception("retention prune failed; will try again")
