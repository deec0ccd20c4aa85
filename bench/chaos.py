"""Chaos soak: the whole farm under many faults at once, and a ledger that proves nothing was lost.

    python bench/chaos.py --minutes 20 --seed 7 --db postgres --report docs/chaos/run.json

Starts a private Mosquitto (persistence on), the model registry, two ingest processes on one MQTT
v5 shared subscription, and three agents (simulated camera and sensors at a high rate, each with a
message ledger: ``[debug] ledger_path``), then injects the faults of a schedule drawn from the
seed (chaos_faults.py), each logged with its time. A model is published a third of the way in and
rolled back at two thirds. ``--minutes`` is the fault phase; then every fault is healed, the
system drains, and every msg_id in the ledgers is looked up in the database: stored exactly once,
dropped by a counted policy (budget, TTL, full disk), or lost. Unexplained losses or duplicates
fail the run (exit code 1). docs/chaos.md has the method, its limits and the measured runs.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil
import sqlalchemy as sa
from chaos_faults import Fault, Injector, free_disk, schedule, set_clock
from chaos_people import (
    Mailbox,
    add_user_and_subscription,
    monitor_healthy,
    notification_summary,
    notifications_pending,
)
from chaos_report import (
    alert_rows,
    final_models,
    outbox_ids,
    outbox_sample,
    print_tables,
    read_ledgers,
    reconcile,
    recovery_times,
    rss_summary,
    stored_rows,
    write_report,
)
from chaos_stack import FIRST, MODEL, REPO, Stack, start_stack

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


class Watch:
    """Samples RSS and outbox depth every few seconds and restarts a child that died on its own."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.rss: dict[str, list[tuple[float, int, int]]] = {}
        self.peak_depth = 0
        self.peak_age = 0.0
        self.unexpected_exits: Counter[str] = Counter()
        self.seen_at: dict[str, float] = {}
        self.restart = True  # off once the harness stops the agents itself
        self._next = 0.0

    def sample(self, expected_down: set[str]) -> None:
        now = time.time()
        if now < self._next:
            return
        self._next = now + 3.0
        for p in self.stack.all_procs():
            role = "agent" if p.name.startswith("gw-") else p.name.split("-")[0]
            if self.restart and p.name not in expected_down and p.ensure_running():
                self.unexpected_exits[p.name] += 1
            if p.pid is not None:
                with contextlib.suppress(psutil.Error):
                    self.rss.setdefault(role, []).append((now, p.pid, psutil.Process(p.pid).memory_info().rss))
        for agent in self.stack.agents:
            got = outbox_sample(agent, now)
            if got:
                self.peak_depth = max(self.peak_depth, got[0])
                self.peak_age = max(self.peak_age, got[1])
        read_ledgers(self.stack.agents, self.seen_at)


def down_targets(faults: list[Fault], now: float) -> set[str]:
    names = set()
    for f in faults:
        if f.started and not f.healed and f.kind not in ("disk_full", "clock_jump", "pg_terminate"):
            names.add(f.target)
    return names


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix=f"chaos-{args.seed}-"))
    pg_app = f"chaos_{uuid.uuid4().hex[:8]}"
    schema = None
    if args.db == "postgres":
        schema, db_url = _pg_schema(pg_app)
    else:
        db_url = f"sqlite:///{root / 'cropwatch.db'}"
    print(f"chaos soak: work folder {root}", flush=True)
    stack = start_stack(root, db_url, args.agents, (args.camera_s, args.sensor_s))
    # Not under ingest's application_name: pg_terminate_backend must end ingest's connections only
    # (the first 25-minute run ended its own reconciliation that way).
    engine = sa.create_engine(db_url.replace(f"application_name={pg_app}", "application_name=chaos_harness"),
                              pool_pre_ping=True)  # fmt: skip
    mailbox = Mailbox().start()
    add_user_and_subscription(root, db_url, mailbox)
    stack.start_people()
    watch = Watch(stack)
    try:
        _wait(lambda: _detections_from(engine) >= len(stack.agents), 180, "every agent's first detection", watch)
        began = datetime.now(UTC)
        seconds = args.minutes * 60
        faults = schedule(rng, seconds, len(stack.agents), args.db == "postgres", stack.agents[0].tmpfs)
        inj = Injector(stack, rng, pg_app)
        t0 = time.time()
        for f in faults:
            inj.add(f, t0)
        inj.rollout(t0, seconds)
        _fault_phase(inj, watch, faults, t0, seconds)
        drain_s, left = _drain(stack, engine, watch, args.drain_timeout)
        # The outage alerts' notices: notify delivers what is due (a rate-capped digest may wait longer).
        with contextlib.suppress(TimeoutError):
            _wait(lambda: notifications_pending(engine) == 0, 90, "notifications sent", watch)
        monitor_ok = monitor_healthy(stack.monitor_port)
        models = final_models(engine)
        notices = notification_summary(engine, began, t0 + seconds, mailbox)
        stored, dups = stored_rows(engine)
        ledger = read_ledgers(stack.agents, watch.seen_at)
        rec = reconcile(ledger, stored, faults, left)
        alerts = alert_rows(engine, began, before=t0 + seconds)
    finally:
        stack.stop()
        engine.dispose()
        mailbox.stop()
    report = {
        "seed": args.seed, "minutes": args.minutes, "db": args.db, "agents": len(stack.agents),
        "started": began.isoformat(), "drain_s": drain_s, "reconciliation": rec, "duplicates": dups,
        "faults_per_kind": dict(Counter(f.kind for f in faults if f.started)),
        "faults": [vars(f) for f in faults], "timeline": inj.log,
        "recovery": recovery_times(faults, stored), "rss": rss_summary(watch.rss),
        "outbox": {"peak_depth": watch.peak_depth, "peak_age_s": round(watch.peak_age, 1)},
        "models_at_end": models,
        # The rollback (to FIRST) reached every agent, whatever faults it met (a full disk among them).
        "rollback_everywhere": bool(models) and all(
            f"{MODEL} {FIRST} champion active" in listed for listed in models.values()
        ),
        "alerts": alerts, "notifications": notices, "monitor_healthy_at_end": monitor_ok,
        "unexpected_exits": dict(watch.unexpected_exits),
        "outbox_tmpfs": stack.agents[0].tmpfs, "work_folder": str(root),
    }  # fmt: skip
    # A broker SIGKILL no longer excuses a loss: agents hold what it acknowledged (edge_agent/held.py).
    report["passed"] = rec["lost_unexplained"] == 0 and rec["lost_broker_crash"] == 0 and dups == 0
    if schema:
        _pg_drop(schema)
    if report["passed"] and not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return report


def _fault_phase(inj: Injector, watch: Watch, faults: list[Fault], t0: float, seconds: float) -> None:
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("faults", total=seconds)
        while time.time() < t0 + seconds or inj.pending():
            now = time.time()
            inj.tick(now)
            watch.sample(down_targets(faults, now))
            bar.update(task, completed=min(seconds, now - t0))
            time.sleep(0.1)


def _drain(stack: Stack, engine: sa.Engine, watch: Watch, timeout: float) -> tuple[float, set[str]]:
    """Heal everything, let the backlog drain, stop the agents (SIGTERM), and wait for the last messages.

    Returns the drain's seconds and the msg_ids still in a stopped agent's outbox (kept on the
    device, sent at its next start: not lost, and reported).
    """
    start = time.time()
    for agent in stack.agents:
        set_clock(agent, 0.0)
        free_disk(agent)
    if stack.broker.proc is None or stack.broker.proc.poll() is not None:
        stack.broker.start()

    def accounted(before: float, extra: set[str]) -> bool:
        watch.sample(set())
        ledger = read_ledgers(stack.agents, watch.seen_at)
        stored, _ = stored_rows(engine)
        return not [
            m for m, (_d, _k, seen) in ledger.created.items()
            if seen < before and m not in stored and m not in ledger.dropped and m not in extra
        ]  # fmt: skip

    # The backlog built up by the faults is delivered: no outbox holds a row older than 10 s.
    def backlog_gone() -> bool:
        watch.sample(set())
        depths = [outbox_sample(a, time.time()) for a in stack.agents]
        return all(d is not None and (d[0] == 0 or d[1] < 10) for d in depths)

    with contextlib.suppress(TimeoutError):
        _wait(backlog_gone, timeout, "the backlog", watch, every=2.0)
    watch.restart = False
    for agent in stack.agents:
        agent.proc.stop()
    left: set[str] = set()
    for agent in stack.agents:
        left |= outbox_ids(agent)
    stopped = time.time() + 0.5
    # Then ingest stores the last of it: every ledgered message accounted for, or nothing new
    # stored for 6 s (what is still missing then is lost, and the report says so).
    counts: list[int] = []

    def quiet() -> bool:
        counts.append(len(stored_rows(engine)[0]))
        return accounted(stopped, left) or (len(counts) > 3 and counts[-1] == counts[-4])

    with contextlib.suppress(TimeoutError):
        _wait(quiet, 60, "the last messages", watch, every=2.0)
    return round(time.time() - start, 1), left


def _wait(cond: Any, timeout: float, what: str, watch: Watch, every: float = 1.0) -> None:
    deadline = time.time() + timeout
    while not cond():
        watch.sample(set())
        if time.time() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def _detections_from(engine: sa.Engine) -> int:
    with contextlib.suppress(sa.exc.SQLAlchemyError), engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT COUNT(DISTINCT device_id) FROM detections")).scalar_one())
    return 0


def _pg_schema(app: str) -> tuple[str, str]:
    import psycopg

    schema = f"chaos_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return schema, f"{POSTGRES}?options=-csearch_path%3D{schema}&application_name={app}"


def _pg_drop(schema: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=3.0, help="length of the fault phase")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--agents", type=int, default=3)
    p.add_argument("--camera-s", type=float, default=1.0, help="seconds between simulated camera shots")
    p.add_argument("--sensor-s", type=float, default=0.5, help="seconds between sensor readings")
    p.add_argument("--drain-timeout", type=float, default=300.0)
    p.add_argument("--report", type=Path, default=REPO / "chaos-report.json")
    p.add_argument("--keep", action="store_true", help="keep the work folder (it is kept anyway on failure)")
    args = p.parse_args(argv)
    report = run(args)
    write_report(args.report, report)
    print_tables(report)
    print(f"report: {args.report}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
