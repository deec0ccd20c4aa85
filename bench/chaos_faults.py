"""The chaos soak's faults: a schedule drawn from the seed, and what each fault does.

Power loss (``agent_power_loss``): the agent is frozen with SIGSTOP at a random instant (agents
write their outbox several times a second), its outbox files are copied (the page cache as it is
at that instant), it is SIGKILLed, and the copy is put back with the WAL's tail torn at a random
byte after its last commit frame: what a power cut leaves of a transaction that was being
written (SQLite's own crash tests tear the tail the same way). Limits: committed frames are kept,
which is the contract of ``synchronous=FULL``; the acknowledgement deletes (committed with
``synchronous=NORMAL``) are not rolled back, and a disk that reorders or lies about fsync is not
modelled. No root loop device or LD_PRELOAD is needed.

PostgreSQL restart (``pg_terminate``): the server is shared with other work on this machine, so
it is not restarted; ingest's connections (found by their ``application_name``) are ended with
``pg_terminate_backend``, which is what ingest sees of a restart.
"""

from __future__ import annotations

import heapq
import os
import random
import shutil
import signal
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos_stack import SECOND, Agent, Stack, publish

KINDS = {
    # kind: (weight, duration range in s)
    "broker_kill": (2, (1.0, 3.0)),
    "broker_stop": (1, (15.0, 30.0)),
    "ingest_kill": (2, (1.0, 4.0)),
    "ingest_shared_kill": (2, (10.0, 25.0)),
    "agent_kill": (4, (0.5, 3.0)),
    "agent_power_loss": (3, (0.5, 3.0)),
    "pg_terminate": (2, (0.0, 0.0)),
    "disk_full": (1, (15.0, 30.0)),
    "clock_jump": (2, (15.0, 30.0)),
}


@dataclass
class Fault:
    kind: str
    target: str
    at: float  # seconds from the start of the fault phase
    duration: float
    started: float | None = None  # wall clock (time.time())
    healed: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def schedule(rng: random.Random, seconds: float, n_agents: int, postgres: bool, tmpfs: bool) -> list[Fault]:
    """Faults from 8 s in until ``seconds``; one at a time per target, different targets overlap."""
    kinds = [k for k in KINDS if (postgres or k != "pg_terminate") and (tmpfs or k != "disk_full")]
    busy: dict[str, float] = {}
    out: list[Fault] = []
    t = 8.0
    while True:
        t += rng.uniform(3.0, 9.0)
        kind = rng.choices(kinds, weights=[KINDS[k][0] for k in kinds])[0]
        lo, hi = KINDS[kind][1]
        duration = rng.uniform(lo, hi)
        if t + duration > seconds:
            break
        target = _target(rng, kind, n_agents)
        if busy.get(target, 0.0) > t or (target.startswith("ingest") and busy.get("broker", 0.0) > t):
            continue
        busy[target] = t + duration + 2.0
        out.append(Fault(kind, target, round(t, 2), round(duration, 2)))
    return out


def _target(rng: random.Random, kind: str, n_agents: int) -> str:
    if kind.startswith("broker"):
        return "broker"
    if kind == "ingest_kill":
        return "ingest-a"
    if kind == "ingest_shared_kill":
        return "ingest-b"
    if kind == "pg_terminate":
        return "postgres"
    if kind == "disk_full":
        return "gw-0"
    return f"gw-{rng.randrange(n_agents)}"


class Injector:
    """Runs the schedule's steps as their time comes; the main loop calls ``tick`` often."""

    def __init__(self, stack: Stack, rng: random.Random, pg_app: str | None) -> None:
        self.stack = stack
        self.rng = rng
        self.pg_app = pg_app
        self._steps: list[tuple[float, int, Callable[[], None]]] = []
        self._n = 0
        self.log: list[dict[str, Any]] = []
        self.threads: list[threading.Thread] = []

    def at(self, when: float, step: Callable[[], None]) -> None:
        self._n += 1
        heapq.heappush(self._steps, (when, self._n, step))

    def tick(self, now: float) -> None:
        while self._steps and self._steps[0][0] <= now:
            _, _, step = heapq.heappop(self._steps)
            step()

    def pending(self) -> int:
        return len(self._steps) + sum(t.is_alive() for t in self.threads)

    def note(self, what: str, **detail: Any) -> None:
        self.log.append({"at": time.time(), "what": what, **detail})

    def add(self, fault: Fault, t0: float) -> None:
        begin = t0 + fault.at
        end = begin + fault.duration
        self.at(begin, lambda: self._begin(fault))
        self.at(end, lambda: self._end(fault))

    def agent(self, name: str) -> Agent:
        return next(a for a in self.stack.agents if a.device == name)

    def _begin(self, f: Fault) -> None:
        f.started = time.time()
        s = self.stack
        if f.kind == "broker_kill" and s.broker.proc is not None:
            s.broker.proc.kill()
            s.broker.proc.wait()
        elif f.kind == "broker_stop":
            s.broker.stop()
        elif f.kind in ("ingest_kill", "ingest_shared_kill"):
            next(p for p in s.ingests if p.name == f.target).kill()
        elif f.kind == "agent_kill":
            self.agent(f.target).proc.kill()
        elif f.kind == "agent_power_loss":
            f.detail = power_loss(self.agent(f.target), self.rng)
        elif f.kind == "pg_terminate":
            f.detail = {"terminated": terminate_backends(s.db_url, self.pg_app or "")}
        elif f.kind == "disk_full":
            f.detail = fill_disk(self.agent(f.target))
        elif f.kind == "clock_jump":
            hours = self.rng.choice([2.0, 3.0, -2.0, -3.0])
            f.detail = {"hours": hours}
            set_clock(self.agent(f.target), hours * 3600)
        self.note(f"{f.kind} begins", target=f.target, **f.detail)

    def _end(self, f: Fault) -> None:
        s = self.stack
        if f.kind in ("broker_kill", "broker_stop"):
            s.broker.start()
        elif f.kind in ("ingest_kill", "ingest_shared_kill"):
            next(p for p in s.ingests if p.name == f.target).start()
        elif f.kind in ("agent_kill", "agent_power_loss"):
            self.agent(f.target).proc.start()
        elif f.kind == "disk_full":
            free_disk(self.agent(f.target))
        elif f.kind == "clock_jump":
            # Back past where it was: a device whose NTP corrects a wrong jump.
            set_clock(self.agent(f.target), 0.0)
        f.healed = time.time()
        self.note(f"{f.kind} healed", target=f.target)

    def rollout(self, t0: float, seconds: float) -> None:
        """A new version published a third of the way in, rolled back at two thirds."""
        self.at(t0 + seconds / 3, lambda: self._publish("publish", SECOND))
        self.at(t0 + 2 * seconds / 3, lambda: self._publish("rollback", None))

    def _publish(self, action: str, version: str | None) -> None:
        # On a thread: the CLI takes seconds, and the other faults keep their times meanwhile.
        # Retried as an operator would: the broker may be down for a while just then.
        def run() -> None:
            for attempt in range(1, 31):
                try:
                    publish(self.stack, action, version)
                    self.note(f"model {action}", version=version, attempts=attempt)
                    return
                except Exception as exc:  # reported, not fatal: the soak goes on
                    error = str(exc)
                time.sleep(3.0)
            self.note(f"model {action} failed", error=error)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)


def power_loss(agent: Agent, rng: random.Random) -> dict[str, Any]:
    proc = agent.proc.proc
    if proc is None or proc.poll() is not None:
        return {"skipped": "agent not running"}
    proc.send_signal(signal.SIGSTOP)
    files = {p: p.read_bytes() for p in (agent.outbox, Path(f"{agent.outbox}-wal")) if p.exists()}
    proc.kill()
    proc.wait()
    wal_path = Path(f"{agent.outbox}-wal")
    torn = 0
    if wal_path in files:
        data = files[wal_path]
        keep = last_commit_end(data)
        cut = rng.randint(keep, len(data)) if len(data) > keep else len(data)
        torn = len(data) - cut
        files[wal_path] = data[:cut]
    for path, data in files.items():
        path.write_bytes(data)
    Path(f"{agent.outbox}-shm").unlink(missing_ok=True)
    return {"wal_bytes_torn": torn}


def last_commit_end(wal: bytes) -> int:
    """Byte offset just past the last commit frame of the WAL's current generation (32 if none)."""
    if len(wal) < 32:
        return 0
    page_size = struct.unpack(">I", wal[8:12])[0]
    salts = wal[16:24]
    frame = 24 + page_size
    end, pos = 32, 32
    while pos + frame <= len(wal):
        header = wal[pos : pos + 24]
        if header[8:16] != salts:
            break
        if struct.unpack(">I", header[4:8])[0] != 0:
            end = pos + frame
        pos += frame
    return end


def terminate_backends(db_url: str, app: str) -> int:
    import psycopg

    dsn = db_url.split("?")[0].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s AND pid <> "
            "pg_backend_pid()",
            (app,),
        ).fetchall()
    return len(rows)


def fill_disk(agent: Agent) -> dict[str, Any]:
    """Fill the agent's tmpfs to the last byte with a file the harness removes later."""
    filler = agent.state / "chaos-filler"
    free = shutil.disk_usage(agent.state).free
    with open(filler, "wb", buffering=0) as fh:
        try:
            fh.write(b"\0" * free)
            while True:
                fh.write(b"\0" * 4096)
        except OSError:  # ENOSPC: full, as wanted
            pass
    return {"filled_bytes": free}


def free_disk(agent: Agent) -> None:
    (agent.state / "chaos-filler").unlink(missing_ok=True)


def set_clock(agent: Agent, offset_s: float) -> None:
    tmp = agent.clock_file.with_suffix(".tmp")
    tmp.write_text(f"{offset_s}\n", encoding="utf-8")
    os.replace(tmp, agent.clock_file)
