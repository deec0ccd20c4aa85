"""Exactly once with real ``cropwatch notify`` processes: one is SIGKILLed while its message is in flight,
two more then run side by side; every (alert, subscription) gets one answered delivery, on SQLite and
PostgreSQL.

The receiver holds the first request open until its sender is dead and counts it ``abandoned``
(the sender never learnt it arrived); the lease then hands that row to a surviving process.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.notify_world import Receiver, payload, raise_alert, subscribe, world
from tests.services import cropwatch_cmd, cropwatch_env, wait_for

ALERTS, SUBSCRIBERS = 12, 3


def _config(root: Path, db_url: str, users: Path) -> Path:
    path = root / "monitor.toml"
    path.write_text(
        f'[database]\nurl = "{db_url}"\n[app]\nusers_file = "{users}"\n'
        "[notify]\npoll_interval_s = 0.2\nlease_s = 5\nrate_cap_per_hour = 1000\nescalate_after_min = 0\n"
    )
    return path


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_processes_and_a_sigkill_deliver_each_notification_once(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    db_url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "postgres_url")
    cfg, engine = world(tmp_path, db_url)
    rec = Receiver(hold_first=True)
    server = rec.serve()
    for i in range(SUBSCRIBERS):
        subscribe(engine, "agro", [rec.json_url(f"/s{i}")], min_severity="info")
    now = datetime.now(UTC)
    ids = [raise_alert(cfg, engine, f"k{i}", now, "warning", field_id=f"f{i}") for i in range(ALERTS)]
    config = _config(tmp_path, db_url, Path(cfg.app.users_file))
    logs = [(tmp_path / f"notify-{n}.log").open("w") for n in "abc"]

    def start(n: int) -> subprocess.Popen:
        return subprocess.Popen(cropwatch_cmd("notify", "--config", str(config)), env=cropwatch_env(),
                                stdout=logs[n], stderr=subprocess.STDOUT)  # fmt: skip

    procs = [start(0)]
    try:
        wait_for(rec.held.is_set, 60, 0.05, "the first delivery in flight")
        os.kill(procs[0].pid, signal.SIGKILL)  # mid-delivery: the request is at the receiver, unanswered
        procs[0].wait(10)
        wait_for(lambda: rec.abandoned, 20, 0.05, "the receiver to see the sender gone")
        procs += [start(1), start(2)]
        expected = ALERTS * SUBSCRIBERS
        wait_for(lambda: len(rec.requests) >= expected, 90, 0.1, f"{expected} deliveries")

        def sent() -> int:
            # A connection per poll: one held open keeps its first snapshot (and, on SQLite, a read
            # lock), so it would never see the senders' later commits.
            with engine.connect() as conn:
                return int(conn.execute(text(
                    "SELECT count(*) FROM notification_deliveries WHERE state = 'sent'")).scalar_one())  # fmt: skip

        wait_for(lambda: sent() == expected, 60, 0.1, "the ledger to record every send")
    finally:
        for p in procs[1:]:
            p.terminate()
        for p in procs:
            p.wait(20)
        for f in logs:
            f.close()
        server.shutdown()
    got = Counter()
    for r in rec.requests:
        alert = int(re.search(r"^# (\d+):", payload(r)["message"], re.M).group(1))
        got[(r.path, alert)] += 1
    want = {(f"/s{i}", a) for i in range(SUBSCRIBERS) for a in ids}
    assert set(got) == want and max(got.values()) == 1  # each once, nothing missing, no duplicate
    assert len(rec.abandoned) == 1
    with engine.connect() as conn:
        states = dict(conn.execute(text("SELECT state, count(*) FROM notification_deliveries GROUP BY state")).all())
        takers = conn.execute(text("SELECT count(*) FROM notification_deliveries WHERE attempts = 2")).scalar_one()
        senders = sorted(n for (n,) in conn.execute(text(
            "SELECT count(*) FROM notification_deliveries WHERE state = 'sent' GROUP BY claimed_by")))  # fmt: skip
    assert states == {"sent": ALERTS * SUBSCRIBERS}
    assert takers >= 1  # the killed process's claim was taken over after its lease
    for n in (1, 2):
        assert procs[n].returncode == 0, (tmp_path / f"notify-{'abc'[n]}.log").read_text()[-2000:]
    print(
        f"{backend}: alerts {ALERTS}, subscribers {SUBSCRIBERS}, expected {len(want)}, delivered "
        f"{sum(got.values())}, duplicates {sum(got.values()) - len(got)}, abandoned in flight {len(rec.abandoned)}, "
        f"sent per surviving process {senders}"
    )
