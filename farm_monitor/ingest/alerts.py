"""Alert rules evaluated by ingest; each alert is stored once per episode and acknowledged in the monitor.

An episode is identified by ``dedup_key`` (rule, farm and subject); the partial unique index on
open alerts turns a repeated raise into a no-op, so two ingest processes cannot double an alert.
An alert is resolved (``resolved_at``) when its condition clears; a later recurrence is a new row.
The monitor acknowledges through :func:`farm_monitor.db.alerts.acknowledge`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection

from shared import messages as m
from shared.display_names import display_name

from ..config import AlertSettings
from ..db.dialect import Dialect, insert_columns
from ..db.models import Alert, table_of
from .metrics import Metrics
from .rows import dumps

logger = logging.getLogger(__name__)

# A raised alert sets every column but those its later life fills in.
ALERT_COLUMNS = tuple(
    c for c in insert_columns(table_of(Alert)) if c not in ("resolved_at", "acknowledged_at", "acknowledged_by")
)
_alert_row = itemgetter(*ALERT_COLUMNS)


_STATE_TEXT = {
    "out_of_range": "reports values outside the physical range",
    "stuck": "has reported the same value for many readings",
    "missing": "has sent no value for several intervals",
}
_KEPT_TEXT = {"out_of_range": "stored but flagged", "stuck": "stored but flagged", "missing": "absent"}


def _since(details: Any) -> datetime | None:
    """The flag's start kept in an open sensor_health alert's details (JSON text or a dict)."""
    try:
        doc = json.loads(details) if isinstance(details, str | bytes) else details
        return datetime.fromisoformat(doc["since"])
    except (TypeError, ValueError, KeyError):
        return None


class AlertEngine:
    def __init__(self, settings: AlertSettings, dialect: Dialect, metrics: Metrics) -> None:
        self.settings = settings
        self.d = dialect
        self.metrics = metrics
        self._insert = dialect.insert_ignore("alerts", ALERT_COLUMNS)
        p = dialect.ph
        self._resolve = f"UPDATE alerts SET resolved_at = {p} WHERE dedup_key = {p} AND resolved_at IS NULL"

    def raise_alert(
        self,
        conn: Connection,
        rule: str,
        key: str,
        severity: str,
        farm_id: str,
        message: str,
        now: datetime,
        device_id: str | None = None,
        field_id: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> bool:
        row = _alert_row({
            "rule": rule, "dedup_key": key, "severity": severity, "farm_id": farm_id, "device_id": device_id,
            "field_id": field_id, "message": message, "details": dumps(details or {}), "raised_at": self.d.ts(now),
        })  # fmt: skip
        raised = conn.exec_driver_sql(self._insert, row).rowcount > 0
        if raised:
            self.metrics.inc("cropwatch_alerts_raised_total", rule=rule)
            logger.warning("alert %s (%s): %s", rule, severity, message)
        return raised

    def resolve(self, conn: Connection, key: str, now: datetime) -> bool:
        done = conn.exec_driver_sql(self._resolve, (self.d.ts(now), key)).rowcount > 0
        if done:
            logger.info("alert %s resolved", key)
        return done

    # --- rules ---------------------------------------------------------------------------------

    def on_statuses(self, conn: Connection, statuses: Iterable[m.Status], now: datetime) -> None:
        """Outbox backlog: the device reports its oldest unsent message is older than the limit."""
        rule = self.settings.outbox_backlog
        if not rule.enabled:
            return
        latest: dict[tuple[str, str], m.Status] = {}
        for st in statuses:
            if st.health is not None:
                latest[(st.farm_id, st.device_id)] = st
        clear: list[str] = []
        for (farm_id, device_id), st in latest.items():
            key = f"outbox_backlog:{farm_id}:{device_id}"
            health = st.health
            assert health is not None
            age = health.outbox_oldest_age_s
            if age is not None and age > rule.older_than_s:
                self.raise_alert(
                    conn, "outbox_backlog", key, rule.severity, farm_id,
                    f"{device_id}: {health.outbox_depth} messages waiting to be sent, oldest "
                    f"{age / 3600:.1f} h old (limit {rule.older_than_s / 3600:.1f} h); check its uplink",
                    now, device_id=device_id,
                    details={"outbox_depth": health.outbox_depth, "outbox_oldest_age_s": age},
                )  # fmt: skip
            else:
                clear.append(key)
        if clear:
            # One query for the batch: almost every heartbeat clears nothing.
            p = self.d.ph
            open_keys = {
                k
                for (k,) in conn.exec_driver_sql(
                    f"SELECT dedup_key FROM alerts WHERE rule = {p} AND resolved_at IS NULL", ("outbox_backlog",)
                )
            }
            for key in clear:
                if key in open_keys:
                    self.resolve(conn, key, now)

    def on_telemetry(self, conn: Connection, messages: Iterable[m.Telemetry], now: datetime) -> None:
        """Sensor health: a ``sensor_health`` flag raises one alert per device, channel and state; the
        alert is resolved by a later message that carries the channel's reading without that flag."""
        rule = self.settings.sensor_health
        if not rule.enabled:
            return
        by_device: dict[tuple[str, str], list[m.Telemetry]] = {}
        for msg in messages:
            by_device.setdefault((msg.farm_id, msg.device_id), []).append(msg)
        p = self.d.ph
        open_rows = conn.exec_driver_sql(
            f"SELECT farm_id, device_id, dedup_key, details FROM alerts WHERE rule = {p} AND resolved_at IS NULL",
            ("sensor_health",),
        ).all()
        open_by_device: dict[tuple[str, str], list[tuple[str, Any]]] = {}
        for farm_id, device_id, key, details in open_rows:
            open_by_device.setdefault((farm_id, device_id), []).append((key, details))
        for (farm_id, device_id), msgs in by_device.items():
            # Oldest first, so a batch holding an outage's replay ends in the latest state.
            msgs.sort(key=lambda t: t.observed_at)
            still_open = {key: _since(details) for key, details in open_by_device.get((farm_id, device_id), [])}
            for msg in msgs:
                flagged = set()
                for h in msg.sensor_health:
                    if h.state not in rule.states:
                        continue
                    key = f"sensor_health:{farm_id}:{device_id}:{h.sensor}:{h.quantity}:{h.state}"
                    flagged.add(key)
                    self.raise_alert(
                        conn, "sensor_health", key, rule.severity, farm_id,
                        f"{device_id}: sensor {h.sensor} ({h.quantity}) {_STATE_TEXT[h.state]} since "
                        f"{h.since:%Y-%m-%d %H:%M} UTC; its readings are {_KEPT_TEXT[h.state]}",
                        now, device_id=device_id, field_id=msg.field_id,
                        details={"sensor": h.sensor, "quantity": h.quantity, "state": h.state,
                                 "since": h.since.isoformat()},
                    )  # fmt: skip
                    still_open.setdefault(key, h.since)
                present = {(r.sensor, r.quantity) for r in msg.readings}
                for key, since in list(still_open.items()):
                    sensor, quantity = key.split(":")[3:5]
                    healthy = key not in flagged and (sensor, quantity) in present
                    if healthy and (since is None or msg.observed_at > since):
                        self.resolve(conn, key, now)
                        del still_open[key]

    def evaluate_offline(self, conn: Connection, now: datetime) -> None:
        rule = self.settings.device_offline
        if not rule.enabled:
            return
        p = self.d.ph
        cutoff = self.d.ts(now - timedelta(seconds=rule.after_s))
        rows = conn.exec_driver_sql(
            "SELECT farm_id, device_id, last_seen_at, state FROM devices "
            f"WHERE (last_seen_at < {p} OR (state = 'offline' AND state_since < {p})) "
            # A device asleep between uplink windows (or reporting only on change) promised its next
            # contact: silence is expected until then, plus the rule's grace (after_s).
            f"AND (next_contact_at IS NULL OR next_contact_at < {p})",
            (cutoff, cutoff, cutoff),
        ).all()
        for farm_id, device_id, last_seen, state in rows:
            self.raise_alert(
                conn, "device_offline", f"device_offline:{farm_id}:{device_id}", rule.severity, farm_id,
                f"{device_id} has been {'offline' if state == 'offline' else 'silent'} for more than "
                f"{rule.after_s / 60:g} min (last message {last_seen})",
                now, device_id=device_id, details={"state": state, "after_s": rule.after_s},
            )  # fmt: skip
        back = conn.exec_driver_sql(
            "SELECT a.dedup_key FROM alerts a JOIN devices d ON d.farm_id = a.farm_id AND d.device_id = a.device_id "
            f"WHERE a.rule = 'device_offline' AND a.resolved_at IS NULL AND d.last_seen_at >= {p} "
            "AND COALESCE(d.state, 'online') <> 'offline'",
            (cutoff,),
        ).all()
        for (key,) in back:
            self.resolve(conn, key, now)

    def evaluate_disease(self, conn: Connection, fields: set[tuple[str, str]], now: datetime) -> None:
        """A disease class above P% of a field's answered detections in the last N hours.

        Detections the model abstained on (`uncertain`) or refused (`not_a_leaf`) are neither a
        disease nor healthy: they count in neither the share nor ``min_detections``.
        """
        rule = self.settings.disease
        if not rule.enabled:
            return
        p = self.d.ph
        open_fields = conn.exec_driver_sql(
            "SELECT DISTINCT farm_id, field_id FROM alerts WHERE rule = 'disease' AND resolved_at IS NULL"
        ).all()
        since = self.d.ts(now - timedelta(hours=rule.window_hours))
        healthy = rule.healthy_pattern.lower()
        for farm_id, field_id in sorted(fields | {(f, g) for f, g in open_fields}):
            counts = conn.exec_driver_sql(
                "SELECT label, COUNT(*) FROM detections "
                f"WHERE farm_id = {p} AND field_id = {p} AND observed_at >= {p} "
                "AND COALESCE(status, 'ok') = 'ok' GROUP BY label",
                (farm_id, field_id, since),
            ).all()
            total = sum(n for _, n in counts)
            firing: set[str] = set()
            if total >= rule.min_detections:
                for label, n in counts:
                    share = 100.0 * n / total
                    if healthy and healthy in label.lower():
                        continue
                    if share > rule.percent:
                        firing.add(label)
                        self.raise_alert(
                            conn, "disease", f"disease:{farm_id}:{field_id}:{label}", rule.severity, farm_id,
                            f"{display_name(label)} in {share:.0f}% of {field_id}'s {total} detections in the last "
                            f"{rule.window_hours:g} h (threshold {rule.percent:g}%)",
                            now, field_id=field_id,
                            details={"label": label, "count": n, "total": total, "percent": round(share, 2)},
                        )  # fmt: skip
            open_keys = conn.exec_driver_sql(
                "SELECT dedup_key FROM alerts WHERE rule = 'disease' AND farm_id = "
                f"{p} AND field_id = {p} AND resolved_at IS NULL",
                (farm_id, field_id),
            ).all()
            prefix = f"disease:{farm_id}:{field_id}:"
            for (key,) in open_keys:
                if key.removeprefix(prefix) not in firing:
                    self.resolve(conn, key, now)
