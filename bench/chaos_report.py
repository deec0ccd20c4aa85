"""The chaos soak's reconciliation (ledgers against the database) and its figures."""

from __future__ import annotations

import contextlib
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from chaos_faults import Fault
from chaos_stack import AUTOSAVE_S, Agent

# RSS samples of a process's first minutes are start-up, not a leak (rss_summary).
RSS_WARMUP_S = 180.0
MESSAGE_TABLES = ("detections", "telemetry", "samples", "yield_estimates", "events")


@dataclass
class LedgerView:
    created: dict[str, tuple[str, str, float]] = field(default_factory=dict)  # msg_id -> device, kind, seen at
    dropped: dict[str, str] = field(default_factory=dict)  # msg_id -> reason
    acked: dict[str, float] = field(default_factory=dict)  # msg_id -> last time the broker acknowledged it
    bad_lines: int = 0


def read_ledgers(agents: list[Agent], seen_at: dict[str, float]) -> LedgerView:
    """Every agent's ledger; ``seen_at`` (kept across calls) is when the harness first read each line."""
    import time

    view = LedgerView()
    now = time.time()
    for agent in agents:
        if not agent.ledger.exists():
            continue
        for line in agent.ledger.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "created":
                at = seen_at.setdefault(parts[1], now)
                view.created[parts[1]] = (agent.device, parts[2], at)
            elif len(parts) == 4 and parts[0] == "dropped":
                view.dropped[parts[1]] = parts[3]
                # A full disk drops a message before its commit, so it has no "created" line.
                if parts[3] == "disk_full" and parts[1] not in view.created:
                    view.created[parts[1]] = (agent.device, parts[2], seen_at.setdefault(parts[1], now))
            elif len(parts) == 4 and parts[0] == "acked":
                with contextlib.suppress(ValueError):
                    view.acked[parts[1]] = float(parts[3])
            else:
                view.bad_lines += 1  # a line cut by a kill
    return view


def stored_rows(engine: sa.Engine) -> tuple[dict[str, tuple[str, datetime]], int]:
    """msg_id -> (device, received_at) over the message tables, and rows stored more than once."""
    out: dict[str, tuple[str, datetime]] = {}
    duplicates = 0
    with engine.connect() as conn:
        for table in MESSAGE_TABLES:
            key = "msg_id, reading_index" if table == "telemetry" else "msg_id"
            duplicates += conn.execute(sa.text(
                f"SELECT COUNT(*) FROM (SELECT {key} FROM {table} GROUP BY {key} HAVING COUNT(*) > 1) d"
            )).scalar_one()  # fmt: skip
            for msg_id, device, received in conn.execute(
                sa.text(f"SELECT DISTINCT msg_id, device_id, received_at FROM {table}")
            ):
                if msg_id in out and table != "telemetry":
                    duplicates += 1  # one msg_id in two tables
                out[msg_id] = (device, _utc(received))
    return out, duplicates


def _utc(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def reconcile(
    ledger: LedgerView, stored: dict[str, tuple[str, datetime]], faults: list[Fault], left: set[str]
) -> dict[str, Any]:
    """Every created msg_id: stored once, dropped by a counted policy, or lost (explained or not).

    A message the broker acknowledged (the ledger's ``acked`` line, else when it was created)
    within ``AUTOSAVE_S`` (+3 s) before a broker SIGKILL is counted apart as ``lost_broker_crash``:
    Mosquitto had acknowledged it and kept it only in memory, and the agent's hold
    (edge_agent/held.py) should have sent it again. It fails the run like any other loss.
    """
    kills = [f.started for f in faults if f.kind == "broker_kill" and f.started]
    dropped: Counter[str] = Counter()
    lost_crash, lost = [], []
    stored_n = stored_after_drop = in_outbox = 0
    for msg_id, (_device, _kind, seen) in ledger.created.items():
        if msg_id in stored:
            stored_n += 1
            stored_after_drop += msg_id in ledger.dropped
        elif msg_id in left:
            in_outbox += 1
        elif msg_id in ledger.dropped:
            dropped[ledger.dropped[msg_id]] += 1
        elif any(k - AUTOSAVE_S - 3 <= ledger.acked.get(msg_id, seen) <= k + 3 for k in kills):
            lost_crash.append(msg_id)
        else:
            lost.append(msg_id)
    unledgered = [m for m in stored if m not in ledger.created]
    return {
        "created": len(ledger.created),
        "stored": stored_n,
        "stored_despite_drop_line": stored_after_drop,
        "left_in_outbox": in_outbox,
        "dropped_by_policy": dict(dropped),
        "lost_broker_crash": len(lost_crash),
        "lost_unexplained": len(lost),
        "lost_examples": sorted(lost)[:20],
        "stored_not_in_ledger": len(unledgered),
        "ledger_partial_lines": ledger.bad_lines,
    }


def recovery_times(faults: list[Fault], stored: dict[str, tuple[str, datetime]]) -> list[dict[str, Any]]:
    """Seconds from each fault's healing to the first message stored after it (that device's for agents)."""
    by_time = sorted((r.timestamp(), dev) for dev, r in stored.values())
    out = []
    for f in faults:
        if f.healed is None:
            continue
        agent_fault = f.target.startswith("gw-")
        first = next((t for t, dev in by_time if t > f.healed and (not agent_fault or dev == f.target)), None)
        out.append({"kind": f.kind, "target": f.target, "healed": f.healed,
                    "recovery_s": None if first is None else round(first - f.healed, 2)})  # fmt: skip
    return out


def final_models(engine: sa.Engine) -> dict[str, list[str]]:
    """Each device's models as its last status reported them ("name version role state")."""
    import json

    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT device_id, models FROM devices ORDER BY device_id")).fetchall()
    out = {}
    for device, models in rows:
        listed = json.loads(models) if isinstance(models, str) else (models or [])
        out[device] = [f"{m['name']} {m['version']} {m.get('role', 'champion')} {m.get('state', 'active')}"
                       for m in listed]  # fmt: skip
    return out


def alert_rows(engine: sa.Engine, since: datetime, before: float) -> dict[str, Any]:
    """Alerts raised during the fault phase (not the agents' own stop at the end), and how many resolved."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT rule, device_id, raised_at, resolved_at FROM alerts")).fetchall()
    per: dict[str, dict[str, int]] = {}
    for rule, _dev, raised, resolved in rows:
        if _utc(raised) < since or _utc(raised).timestamp() > before:
            continue
        d = per.setdefault(rule, {"raised": 0, "resolved": 0})
        d["raised"] += 1
        d["resolved"] += resolved is not None
    return per


def outbox_sample(agent: Agent, now: float) -> tuple[int, float] | None:
    """(depth, oldest age in s) read from the agent's outbox without writing to it."""
    if not agent.outbox.exists():
        return None
    try:
        db = sqlite3.connect(f"file:{agent.outbox}?mode=ro", uri=True, timeout=1)
        try:
            depth, oldest = db.execute("SELECT COUNT(*), MIN(created) FROM outbox WHERE state != 'held'").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return None
    try:
        offset = float(agent.clock_file.read_text(encoding="utf-8").strip() or 0)
    except (OSError, ValueError):
        offset = 0.0
    if offset:
        return depth, 0.0  # the device's clock is off on purpose: its ages mean nothing now
    return depth, 0.0 if oldest is None else max(0.0, now - oldest)


def outbox_ids(agent: Agent) -> set[str]:
    """msg_ids still in a (stopped) agent's outbox."""
    if not agent.outbox.exists():
        return set()
    db = sqlite3.connect(f"file:{agent.outbox}?mode=ro", uri=True, timeout=5)
    try:
        return {r[0] for r in db.execute("SELECT msg_id FROM outbox")}
    finally:
        db.close()


def rss_summary(samples: dict[str, list[tuple[float, int, int]]]) -> dict[str, Any]:
    """Per role: RSS (MB) at start and end, and the slope per hour of its longest-lived process.

    The first ``RSS_WARMUP_S`` of that process (imports, first model load, caches filling) are left
    out when it lived long enough: a leak is growth after the process settled, not its start-up.
    """
    out = {}
    for role, rows in samples.items():
        if not rows:
            continue
        by_pid: dict[int, list[tuple[float, int]]] = {}
        for t, pid, rss in rows:
            by_pid.setdefault(pid, []).append((t, rss))
        longest = max(by_pid.values(), key=lambda r: r[-1][0] - r[0][0])
        settled = [x for x in longest if x[0] - longest[0][0] >= RSS_WARMUP_S]
        warmup = RSS_WARMUP_S if len(settled) >= 20 else 0.0
        fit = settled if warmup else longest
        span = fit[-1][0] - fit[0][0]
        slope = None
        if span >= 60 and len(fit) >= 3:
            n = len(fit)
            mt = sum(t for t, _ in fit) / n
            mr = sum(r for _, r in fit) / n
            den = sum((t - mt) ** 2 for t, _ in fit)
            slope = sum((t - mt) * (r - mr) for t, r in fit) / den * 3600 / 1e6
        out[role] = {"start_mb": round(fit[0][1] / 1e6, 1), "end_mb": round(fit[-1][1] / 1e6, 1),
                     "first_mb": round(longest[0][1] / 1e6, 1), "warmup_s": warmup,
                     "slope_mb_per_h": None if slope is None else round(slope, 1),
                     "slope_over_s": round(span), "processes": len(by_pid)}  # fmt: skip
    return out


def print_tables(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    r = report["reconciliation"]
    t = Table(title=f"chaos soak: {report['minutes']} min, seed {report['seed']}, {report['db']}")
    t.add_column("figure")
    t.add_column("value", justify="right")
    names = ("created", "stored", "left_in_outbox", "lost_unexplained", "lost_broker_crash", "stored_not_in_ledger")
    for name in names:
        t.add_row(name, str(r[name]))
    t.add_row("duplicates stored", str(report["duplicates"]))
    for reason, n in sorted(r["dropped_by_policy"].items()):
        t.add_row(f"dropped by policy: {reason}", str(n))
    rec = [x["recovery_s"] for x in report["recovery"] if x["recovery_s"] is not None]
    t.add_row("worst recovery (s)", f"{max(rec):.1f}" if rec else "-")
    t.add_row("unrecovered faults", str(sum(x["recovery_s"] is None for x in report["recovery"])))
    t.add_row("outbox peak depth / age (s)", f"{report['outbox']['peak_depth']} / {report['outbox']['peak_age_s']:.0f}")
    t.add_row("drain (s)", f"{report['drain_s']:.0f}")
    console.print(t)
    f = Table(title="faults")
    for c in ("kind", "count", "worst recovery s"):
        f.add_column(c)
    for kind, n in sorted(report["faults_per_kind"].items()):
        worst = [x["recovery_s"] for x in report["recovery"] if x["kind"] == kind and x["recovery_s"] is not None]
        f.add_row(kind, str(n), f"{max(worst):.1f}" if worst else "-")
    console.print(f)
    m = Table(title="RSS (MB)")
    for c in ("role", "start", "end", "slope/h", "over s"):
        m.add_column(c)
    for role, d in report["rss"].items():
        m.add_row(role, str(d["start_mb"]), str(d["end_mb"]), str(d["slope_mb_per_h"]), str(d["slope_over_s"]))
    console.print(m)
    console.print("alerts:", report["alerts"])
    if "notifications" in report:
        console.print("notifications:", report["notifications"])
        console.print("monitor healthy at the end:", report["monitor_healthy_at_end"])
        console.print("models at the end:", report["models_at_end"])
    console.print("verdict:", "[green]PASS[/green]" if report["passed"] else "[red]FAIL[/red]")


def write_report(path: Path, report: dict[str, Any]) -> None:
    import json
    import os

    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, path)


def summary_markdown(reports: list[dict[str, Any]]) -> str:
    """The docs/chaos.md table: one column per report."""

    def worst(r: dict[str, Any]) -> str:
        rec = [x["recovery_s"] for x in r["recovery"] if x["recovery_s"] is not None]
        return f"{max(rec):.1f} s" if rec else "-"

    def slope(r: dict[str, Any], role: str) -> str:
        d = r["rss"].get(role)
        return "-" if not d else f"{d['start_mb']} -> {d['end_mb']} MB, {d['slope_mb_per_h']} MB/h"

    rows = {
        "run": lambda r: f"{r['db']}, {r['minutes']} min, seed {r['seed']}",
        "faults": lambda r: ", ".join(f"{k} {n}" for k, n in sorted(r["faults_per_kind"].items())),
        "created": lambda r: str(r["reconciliation"]["created"]),
        "stored": lambda r: str(r["reconciliation"]["stored"]),
        "dropped by policy": lambda r: (
            ", ".join(f"{k} {n}" for k, n in r["reconciliation"]["dropped_by_policy"].items()) or "0"
        ),
        "left in a stopped outbox": lambda r: str(r["reconciliation"]["left_in_outbox"]),
        "duplicates": lambda r: str(r["duplicates"]),
        "lost, unexplained": lambda r: str(r["reconciliation"]["lost_unexplained"]),
        "lost in a broker SIGKILL": lambda r: str(r["reconciliation"]["lost_broker_crash"]),
        "worst recovery": worst,
        "unrecovered faults": lambda r: str(sum(x["recovery_s"] is None for x in r["recovery"])),
        "agent RSS": lambda r: slope(r, "agent"),
        "ingest RSS": lambda r: slope(r, "ingest"),
        "outbox peak depth / age": lambda r: f"{r['outbox']['peak_depth']} / {r['outbox']['peak_age_s']:.0f} s",
        "alerts raised / resolved": lambda r: ", ".join(
            f"{k} {v['raised']}/{v['resolved']}" for k, v in sorted(r["alerts"].items())
        ),
        "outage alerts mailed": lambda r: (
            "-"
            if "notifications" not in r
            else f"{r['notifications']['raised_notice_delivered']} of {r['notifications']['alerts_raised']}, "
            f"{r['notifications']['mails_received']} mails"
        ),
        "rollback reached every agent": lambda r: {True: "yes", False: "NO"}.get(r.get("rollback_everywhere"), "-"),
        "monitor answering at the end": lambda r: {True: "yes", False: "no"}.get(r.get("monitor_healthy_at_end"), "-"),
        "RSS of monitor / notify": lambda r: f"{slope(r, 'monitor')}; {slope(r, 'notify')}",
        "drain": lambda r: f"{r['drain_s']:.0f} s",
        "verdict": lambda r: "pass" if r["passed"] else "FAIL",
    }
    lines = ["| figure | " + " | ".join(f"run {i + 1}" for i in range(len(reports))) + " |"]
    lines.append("|---" * (len(reports) + 1) + "|")
    for name, fn in rows.items():
        lines.append(f"| {name} | " + " | ".join(fn(r) for r in reports) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    import json
    import sys

    print(summary_markdown([json.loads(Path(p).read_text(encoding="utf-8")) for p in sys.argv[1:]]))
