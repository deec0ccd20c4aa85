"""Real services for tests: private Mosquitto brokers, PostgreSQL, SQLite files.

Under ``CI=true`` a missing service fails the test instead of skipping it, so CI cannot pass by
running nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
POSTGRES_URL = os.environ.get("CROPWATCH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def missing_service(what: str) -> None:
    """Skip (on a developer machine) or fail (under CI=true) for a missing service."""
    if IN_CI:
        pytest.fail(f"{what} is required under CI=true but is not available")
    pytest.skip(f"{what} is not available on this machine")


def wait_for(condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> object:
    """Poll ``condition`` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None
    )


def run_as_me() -> list[str]:
    """Mosquitto started as root drops to the `mosquitto` user, which cannot read a test's temp folder."""
    return ["user root"] if os.geteuid() == 0 else []


@dataclass
class Broker:
    """A running MQTT v5 broker. ``stop``/``start`` keep the port and the persisted state."""

    host: str
    port: int
    workdir: Path
    config_lines: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> None:
        binary = mosquitto_binary()
        assert binary, "mosquitto binary disappeared"
        conf = self.workdir / "mosquitto.conf"
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.workdir}/",
            "max_queued_messages 0",
            f"log_dest file {self.workdir}/mosquitto.log",
            *run_as_me(),
            *self.config_lines,
        ]
        conf.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not port_open(self.host, self.port):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                log = (self.workdir / "mosquitto.log").read_text() if (self.workdir / "mosquitto.log").exists() else ""
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {err}\n{log}")
            if time.monotonic() > deadline:
                raise RuntimeError("mosquitto did not open its port within 10 s")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@contextlib.contextmanager
def private_mosquitto(
    workdir: Path, config_lines: list[str] | None = None, port: int | None = None
) -> Iterator[Broker]:
    """A Mosquitto of our own on a free port (TLS/ACL lines may be added by the caller)."""
    if mosquitto_binary() is None:
        missing_service("the mosquitto binary (apt-get install mosquitto)")
    workdir.mkdir(parents=True, exist_ok=True)
    broker = Broker("127.0.0.1", port or free_port(), workdir, list(config_lines or []))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def postgres_available(url: str = POSTGRES_URL) -> bool:
    try:
        import psycopg
    except ModuleNotFoundError:
        return False
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


@contextlib.contextmanager
def postgres_schema(url: str = POSTGRES_URL) -> Iterator[str]:
    """A fresh PostgreSQL schema for one test; yields a SQLAlchemy URL whose search_path is it."""
    if not postgres_available(url):
        missing_service(f"PostgreSQL at {url}")
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in url else "?"
    try:
        yield f"{url}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


REPO_ROOT = Path(__file__).resolve().parent.parent


def cropwatch_cmd(*args: str) -> list[str]:
    """Run the CLI from this source tree (not whatever copy is installed)."""
    import sys

    return [sys.executable, "-m", "cropwatch", *args]


def cropwatch_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROPWATCH_") or k.startswith("CROPWATCH_TEST_")}
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def puback_code(broker: Broker, user: str, password: str, topic: str) -> int:
    """The PUBACK reason code ``broker`` gives ``user`` for a QoS 1 publish on ``topic`` (0 accepted, 135 refused)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"acl-{free_port()}", protocol=mqtt.MQTTv5)
    client.username_pw_set(user, password)
    acks: dict[int, int] = {}
    client.on_publish = lambda _c, _u, mid, rc, _p: acks.__setitem__(mid, rc.value)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        info = client.publish(topic, b"{}", qos=1)
        wait_for(lambda: info.mid in acks, what=f"PUBACK for {user} on {topic}")
        return acks[info.mid]
    finally:
        client.disconnect()
        client.loop_stop()
