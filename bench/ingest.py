"""Ingest throughput: a real Mosquitto into SQLite and PostgreSQL at QoS 1, against mosquitto_sub.

One private Mosquitto runs with the shipped broker settings (deploy/mosquitto/conf.d). Every
consumer first registers a persistent session (clean start off, QoS 1 subscription) and goes
away; N realistic messages (every kind, from shared.examples, fresh msg_ids) are then published
once at QoS 1, so the broker holds the same backlog for each consumer. Each consumer then drains
its backlog alone, so the figures are sustained receive-and-store rates without a publisher
competing for the 2 CPUs:

* ``mosquitto_sub``: the C client, receiving only (the baseline: how fast the broker can deliver);
* ingest into SQLite and into PostgreSQL: validate, write, commit, acknowledge after commit.

Loss is checked by count and by the set of msg_ids stored. A last run repeats the baseline on a
broker with Mosquitto's defaults to show the drops the shipped settings prevent.

    python bench/ingest.py --messages 60000
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

from farm_monitor.config import MonitorConfig  # noqa: E402
from farm_monitor.db import make_engine, migrate  # noqa: E402
from farm_monitor.ingest.metrics import Metrics  # noqa: E402
from farm_monitor.ingest.pipeline import Ingestor  # noqa: E402
from farm_monitor.ingest.transport import MqttTransport  # noqa: E402
from shared.examples import example_messages  # noqa: E402
from shared.ids import new_msg_id  # noqa: E402
from shared.messages import parse_device_message  # noqa: E402
from shared.topics import device_topic  # noqa: E402

FILTER = "cropwatch/v1/+/+/+"
# A field gateway mostly sends detections and telemetry; statuses are heartbeats; samples
# (with a JPEG) and yield estimates are rarer.
MIX = {"detection": 35, "telemetry": 35, "status": 10, "event": 10, "yield": 5, "sample": 5}
DEVICES = 50
PG_URL = os.environ.get("CROPWATCH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
QUEUE_CONF = REPO / "deploy" / "mosquitto" / "conf.d"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mosquitto(workdir: Path, shipped: bool) -> Iterator[int]:
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence true"]
    lines.append(f"persistence_location {workdir}/")
    if shipped:
        lines.append(f"include_dir {QUEUE_CONF}")
    (workdir / "m.conf").write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen(["mosquitto", "-c", str(workdir / "m.conf")], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("mosquitto did not start")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait()


def make_messages(n: int, seed: int = 7) -> list[tuple[str, bytes, str]]:
    """(topic, payload, msg_id): valid messages of every kind from 50 devices, fresh msg_ids."""
    rng = random.Random(seed)
    templates: dict[str, list[tuple[str, bytes, str]]] = {k: [] for k in MIX}
    for i in range(DEVICES):
        ex = example_messages(farm_id=f"farm-{i % 5}", device_id=f"gw-{i:03d}", fixed=False)
        for kind in MIX:
            msg = ex[kind]
            templates[kind].append((device_topic(msg.farm_id, msg.device_id, kind), msg.to_json(), msg.msg_id))
    kinds = rng.choices(list(MIX), weights=list(MIX.values()), k=n)
    out = []
    for kind in kinds:
        topic, payload, old_id = rng.choice(templates[kind])
        new_id = new_msg_id()
        out.append((topic, payload.replace(old_id.encode(), new_id.encode(), 1), new_id))
    return out


def register_session(port: int, client_id: str, topic_filter: str = FILTER) -> None:
    """A persistent QoS 1 subscription that the broker keeps (and queues for) while we are away."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    done = threading.Event()
    c.on_subscribe = lambda *a: done.set()
    c.connect("127.0.0.1", port, clean_start=False, properties=props)
    c.loop_start()
    c.subscribe(topic_filter, qos=1)
    if not done.wait(10):
        raise RuntimeError("subscription not acknowledged")
    c.disconnect()
    c.loop_stop()


def publish(port: int, messages: list[tuple[str, bytes, str]]) -> float:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-pub", protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    t0 = time.perf_counter()
    infos = [c.publish(t, p, qos=1) for t, p, _ in messages]
    for info in infos:
        info.wait_for_publish(120)
    seconds = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    return seconds


def run_mosquitto_sub(port: int, client_id: str, n: int, timeout: float) -> tuple[int, float, float]:
    """(messages received, seconds, CPU seconds of mosquitto_sub)."""
    with tempfile.TemporaryFile() as out:
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-V", "5", "-i", client_id, "-c", "-x", "3600",
             "-q", "1", "-t", FILTER, "-C", str(n), "-W", str(int(timeout))],
            stdout=out,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        proc.wait()
        seconds = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        out.seek(0)
        count = sum(1 for _ in out)
    return count, seconds, (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)


def run_ingest(
    port: int, url: str, client_id: str, n: int, timeout: float, ingest: dict[str, object]
) -> tuple[int, float, float, Ingestor]:
    """(messages received, seconds, CPU seconds of this process, the ingestor)."""
    cfg = MonitorConfig.model_validate(
        {
            "database": {"url": url},
            "mqtt": {"host": "127.0.0.1", "port": port, "session_expiry_s": 3600},
            "ingest": {"client_id": client_id, **ingest},
            "metrics": {"port": 0},
            "retention": {"interval_s": 0},
            "alerts": {"evaluate_every_s": 5},
        }
    )
    engine = make_engine(cfg.database, writer=True)
    migrate(engine)
    metrics = Metrics()
    transport = MqttTransport(
        cfg.mqtt, FILTER, metrics, client_id=client_id, receive_maximum=cfg.ingest.receive_maximum
    )
    ingestor = Ingestor(cfg, engine, metrics, ack=transport.ack)
    first: list[float] = []
    submit = ingestor.submit

    def timed_submit(*args: object) -> None:
        if not first:
            first.append(time.perf_counter())
        submit(*args)  # type: ignore[arg-type]

    stop = threading.Event()
    cpu0 = time.process_time()
    transport.subscribe(timed_submit)
    worker = threading.Thread(target=ingestor.run, args=(stop, transport.poll), daemon=True)
    worker.start()
    deadline = time.monotonic() + timeout
    done_at = None
    while time.monotonic() < deadline:
        if metrics.total("cropwatch_ingest_received_total") >= n:
            done_at = time.perf_counter()
            break
        time.sleep(0.01)
    transport.pause()
    stop.set()
    worker.join(60)
    transport.stop()
    cpu = time.process_time() - cpu0
    end = done_at or time.perf_counter()
    received = int(metrics.total("cropwatch_ingest_received_total"))
    return received, end - (first[0] if first else end), cpu, ingestor


def cpu_breakdown(port: int, messages: list[tuple[str, bytes, str]], tmpdir: Path) -> None:
    """CPU per message of each ingest stage, measured one at a time in this process."""
    n = len(messages)
    metrics = Metrics()
    cfg = MonitorConfig.model_validate({"mqtt": {"port": port}})
    transport = MqttTransport(cfg.mqtt, FILTER, metrics, client_id="bench-rx-only")
    got: list[tuple] = []
    transport.subscribe(lambda *a: got.append(a))
    acked = 0
    c0 = time.process_time()
    deadline = time.monotonic() + 120
    while len(got) < n and time.monotonic() < deadline:
        transport.poll(0.05)
        if len(got) - acked >= 2000:
            transport.ack([(None, None, g[2], g[3], g[4]) for g in got[acked:]])
            acked = len(got)
    receive = (time.process_time() - c0) / max(len(got), 1)
    transport.stop()
    cfg = MonitorConfig.model_validate(
        {"database": {"url": f"sqlite:///{tmpdir / 'stages.db'}"}, "alerts": {"evaluate_every_s": 1000}}
    )
    engine = make_engine(cfg.database, writer=True)
    migrate(engine)
    ing = Ingestor(cfg, engine, Metrics())
    now = time.monotonic()
    items = [(t, p, i, 1, 0, now) for i, (t, p, _) in enumerate(messages)]
    c0 = time.process_time()
    for _t, p, _ in messages:
        parse_device_message(p)
    validate = (time.process_time() - c0) / n
    c0 = time.process_time()
    batches = [ing.prepare(items[i : i + 2000]) for i in range(0, n, 2000)]
    prepare = (time.process_time() - c0) / n
    c0 = time.process_time()
    for batch in batches:
        ing._commit(batch)
    commit = (time.process_time() - c0) / n
    engine.dispose()
    print()
    print("CPU per message by stage (this process, one stage at a time):")
    print(f"  receive (paho, lean decode, batched PUBACKs) {receive * 1e6:6.1f} us")
    print(f"  validate (shared.messages.parse_device_message) {validate * 1e6:6.1f} us")
    print(f"  rows (topic checks, conversion), without validate {max(prepare - validate, 0) * 1e6:6.1f} us")
    print(f"  write + commit (SQLite executemany, FULL sync) {commit * 1e6:6.1f} us")


def run_scale_out(port: int, url: str, processes: int, n: int, tmpdir: Path, timeout: float) -> tuple[int, float]:
    """N ``cropwatch ingest`` processes on one shared subscription; (received, seconds of draining)."""
    engine = make_engine(url, writer=True)
    migrate(engine)
    engine.dispose()
    procs, ports = [], []
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for i in range(processes):
        mport = free_port()
        conf = tmpdir / f"scale-{i}.toml"
        conf.write_text(
            f'[database]\nurl = "{url}"\n[mqtt]\nport = {port}\nsession_expiry_s = 3600\n'
            f'[ingest]\nclient_id = "bench-so-{i}"\nshared_group = "bench"\n'
            f"[metrics]\nport = {mport}\n[retention]\ninterval_s = 0\n[alerts]\nevaluate_every_s = 5\n"
        )
        log = (tmpdir / f"scale-{i}.log").open("wb")
        procs.append(
            subprocess.Popen([sys.executable, "-m", "cropwatch", "ingest", "--config", str(conf)], env=env,
                             stdout=log, stderr=subprocess.STDOUT)
        )  # fmt: skip
        ports.append(mport)

    def received() -> float:
        total = 0.0
        for mport in ports:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=1) as resp:
                    for line in resp.read().decode().splitlines():
                        if line.startswith("cropwatch_ingest_received_total"):
                            total += float(line.rsplit(" ", 1)[1])
            except OSError:
                pass
        return total

    first = None
    got = 0.0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = received()
        if got and first is None:
            first = time.perf_counter()
        if got >= n:
            break
        time.sleep(0.05)
    end = time.perf_counter()
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.wait(60)
    return int(got), end - (first or end)


def stored_ids(url: str) -> tuple[list[str], int]:
    engine = make_engine(url)
    ids: list[str] = []
    with engine.connect() as conn:
        for table in ("detections", "yield_estimates", "samples", "status_reports", "events"):
            ids += [r[0] for r in conn.exec_driver_sql(f"SELECT msg_id FROM {table}")]
        ids += [r[0] for r in conn.exec_driver_sql("SELECT DISTINCT msg_id FROM telemetry")]
        dead = conn.exec_driver_sql("SELECT COUNT(*) FROM dead_letters").scalar_one()
    engine.dispose()
    return ids, dead


@contextlib.contextmanager
def pg_schema() -> Iterator[str | None]:
    try:
        import psycopg

        dsn = PG_URL.replace("postgresql+psycopg://", "postgresql://")
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(dsn, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
    except Exception as exc:
        print(f"PostgreSQL at {PG_URL} not available ({exc}); skipping it", file=sys.stderr)
        yield None
        return
    try:
        sep = "&" if "?" in PG_URL else "?"
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=60_000)
    parser.add_argument("--timeout", type=float, default=300.0, help="per consumer")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--breakdown", action="store_true", help="also measure CPU per message by stage")
    parser.add_argument(
        "--scale-out", type=int, default=0, metavar="N", help="also run N ingest processes on a shared subscription"
    )
    parser.add_argument("--batch", type=int, help="ingest.batch_max_messages (default: the config default)")
    parser.add_argument("--receive-maximum", type=int, help="ingest.receive_maximum (default: the config default)")
    args = parser.parse_args()
    logging.basicConfig(level="WARNING")
    # every run's detections are 87% late blight: the disease alert is expected, its log line is noise
    logging.getLogger("farm_monitor.ingest.alerts").setLevel(logging.ERROR)
    if not shutil.which("mosquitto") or not shutil.which("mosquitto_sub"):
        print("needs the mosquitto and mosquitto_sub binaries", file=sys.stderr)
        return 2
    n = args.messages
    ingest: dict[str, object] = {}
    if args.batch:
        ingest["batch_max_messages"] = args.batch
    if args.receive_maximum:
        ingest["receive_maximum"] = args.receive_maximum
    messages = make_messages(n)
    published = {mid for _, _, mid in messages}
    size = sum(len(p) for _, p, _ in messages) / n
    print(f"{n} messages, mean payload {size:.0f} B, mix {MIX}, {DEVICES} devices", flush=True)
    results: list[tuple[str, int, float, float, int, int, int]] = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp, pg_schema() as pg_url:
        tmpdir = Path(tmp)
        sqlite_url = f"sqlite:///{tmpdir / 'bench.db'}"
        with mosquitto(tmpdir / "broker", shipped=True) as port:
            consumers = ["bench-mosquitto-sub", "bench-ingest-sqlite"] + (
                ["bench-ingest-pg"] if pg_url and not args.no_postgres else []
            )
            if args.breakdown:
                consumers.append("bench-rx-only")
            for cid in consumers:
                register_session(port, cid)
            scale_out = args.scale_out if pg_url and not args.no_postgres else 0
            for i in range(scale_out):
                register_session(port, f"bench-so-{i}", f"$share/bench/{FILTER}")
            pub_s = publish(port, messages)
            print(f"published at QoS 1 in {pub_s:.1f} s ({n / pub_s:,.0f} msg/s); draining each backlog", flush=True)

            count, secs, cpu = run_mosquitto_sub(port, "bench-mosquitto-sub", n, args.timeout)
            results.append(("mosquitto_sub (receive only)", count, secs, cpu, count, n - count, 0))

            for cid, url, label in (
                ("bench-ingest-sqlite", sqlite_url, "ingest -> SQLite (WAL)"),
                ("bench-ingest-pg", pg_url, "ingest -> PostgreSQL"),
            ):
                if cid not in consumers or url is None:
                    continue
                received, secs, cpu, ing = run_ingest(port, url, cid, n, args.timeout, ingest)
                ids, dead = stored_ids(url)
                unique = set(ids)
                lost = len(published - unique)
                dups = len(ids) - len(unique)
                results.append((label, received, secs, cpu, len(unique), lost, dups + dead))
                print(f"{label}: {ing.batches} batches", flush=True)

            if scale_out:
                with pg_schema() as so_url:
                    assert so_url is not None
                    received, secs = run_scale_out(port, so_url, scale_out, n, tmpdir, args.timeout)
                    ids, dead = stored_ids(so_url)
                unique = set(ids)
                label = f"{scale_out} x ingest -> PostgreSQL"
                results.append(
                    (
                        label,
                        received,
                        secs,
                        float("nan"),
                        len(unique),
                        len(published - unique),
                        dead + len(ids) - len(unique),
                    )
                )
            if args.breakdown:
                cpu_breakdown(port, messages, tmpdir)

        with mosquitto(tmpdir / "default-broker", shipped=False) as port:
            register_session(port, "bench-defaults")
            publish(port, messages)
            count, _, _ = run_mosquitto_sub(port, "bench-defaults", n, 15)
            default_drops = n - count

    base_rate = results[0][1] / results[0][2]
    print()
    print(f"load average (1 min) before/after: {load_before:.2f} / {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    head = ("consumer", "received", "seconds", "msg/s", "vs sub", "CPU s", "us CPU/msg", "stored", "lost", "extra")
    print("{:<30} {:>9} {:>8} {:>9} {:>7} {:>6} {:>10} {:>8} {:>5} {:>6}".format(*head))
    for label, received, secs, cpu, stored, lost, extra in results:
        rate = received / secs if secs else 0.0
        print(
            f"{label:<30} {received:>9} {secs:>8.2f} {rate:>9,.0f} {rate / base_rate:>7.2f} {cpu:>6.2f} "
            f"{1e6 * cpu / max(received, 1):>10.1f} {stored:>8} {lost:>5} {extra:>6}"
        )
    print()
    print(
        f"broker with Mosquitto defaults (max_queued_messages 1000): {default_drops} of {n} queued QoS 1 "
        f"messages dropped for the offline subscriber; with deploy/mosquitto settings: {results[0][5]} dropped"
    )
    sqlite_rows = [r for r in results if "SQLite" in r[0]]
    if sqlite_rows:
        label, received, secs, cpu, stored, lost, extra = sqlite_rows[0]
        rate = received / secs
        print(
            f"targets: SQLite >= 0.5 x mosquitto_sub: {rate / base_rate:.2f} "
            f"({'met' if rate >= 0.5 * base_rate else 'NOT met'}); SQLite >= 10,000 msg/s: {rate:,.0f} "
            f"({'met' if rate >= 10_000 else 'NOT met'}); zero loss: {'yes' if lost == 0 and stored == n else 'NO'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
