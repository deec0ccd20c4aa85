"""The chaos soak's processes: broker, registry, two ingests, agents; each restartable by role."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.services import Broker, free_port, port_open  # noqa: E402

FARM = "chaos-farm"
MODEL = "leafnet"
# The version every agent starts on (and the rollback returns to), and the one rolled out mid-run.
FIRST, SECOND = "1.0.0", "1.1.0"
# Mosquitto writes its in-memory queues to disk this often (the deploy config uses 60 s): what a
# broker SIGKILL can lose is what it accepted since the last save. Reported, never hidden.
AUTOSAVE_S = 10

AGENT_TOML = """data_dir = "{state}"
shutdown_deadline_s = 10.0
queue_size = 64

[device]
farm_id = "{farm}"
device_id = "{device}"
field_id = "field-{i}"

[mqtt]
host = "127.0.0.1"
port = {port}
keepalive_s = 5
reconnect_min_s = 0.5
reconnect_max_s = 4.0

[outbox]
budget_mb = {budget_mb}
max_inflight = 32
hold_acked_s = {hold_s}

[outbox.ttl_s]
telemetry = 3600.0
sample = 86400.0
detection = 86400.0
yield = 86400.0

[trust]
public_keys = ["{pub}"]

[updates]
enabled = true
health_window_s = 15.0

[yield]
enabled = false

[[sources]]
type = "simulated_camera"
name = "cam"
interval_s = {cam_s}
width = 64
height = 64
seed = {i}

[[sources]]
type = "sensors"
name = "soil"
interval_s = {sensor_s}

[sources.reader]
type = "simulated"
seed = {i}

[[sources.channels]]
sensor = "soil1"
quantity = "soil_moisture"
unit = "%"

[[sources.channels]]
sensor = "air1"
quantity = "air_temperature"
unit = "degC"

[samples]
enabled = true
confidence_below = 0.9
max_per_hour = 120

[heartbeat]
interval_s = 5.0

[debug]
ledger_path = "{ledger}"

[log]
format = "text"
"""

MONITOR_TOML = """[database]
url = "{url}"

[mqtt]
host = "127.0.0.1"
port = {port}
keepalive_s = 5
reconnect_min_s = 0.5
reconnect_max_s = 4.0

[ingest]
shared_group = "chaos"

[metrics]
port = 0

[alerts]
evaluate_every_s = 5

[alerts.device_offline]
after_s = 20

[alerts.outbox_backlog]
older_than_s = 30

[retention]
interval_s = 0

[app]
users_file = "{root}/monitor-users.json"
farm_file = "{root}/farm.geojson"
registry = "{root}/registry"

[notify]
poll_interval_s = 2
monitor_url = "http://127.0.0.1:{monitor_port}"
ack_secret = "{ack_secret}"
"""


def cropwatch(*args: str) -> list[str]:
    return [sys.executable, "-m", "cropwatch", *args]


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROPWATCH_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


@dataclass
class Proc:
    """One restartable child: ``cropwatch ...`` with its log and environment."""

    name: str
    args: list[str]
    logs: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        log = open(self.logs / f"{self.name}.log", "ab")  # noqa: SIM115 - lives as long as the child
        self.proc = subprocess.Popen(
            cropwatch(*self.args), stdout=log, stderr=subprocess.STDOUT, env=child_env(**self.env),
            start_new_session=True,
        )  # fmt: skip
        log.close()
        self.starts += 1

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def ensure_running(self) -> bool:
        """Start it again if it died on its own; True if it had (a finding for the report)."""
        if self.proc is not None and self.proc.poll() is not None:
            self.start()
            return True
        return False


@dataclass
class Agent:
    index: int
    device: str
    root: Path
    proc: Proc
    tmpfs: bool = False

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def outbox(self) -> Path:
        return self.state / "outbox.sqlite3"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.txt"

    @property
    def clock_file(self) -> Path:
        return self.root / "clock-offset"


@dataclass
class Stack:
    root: Path
    db_url: str
    broker: Broker
    registry_port: int
    registry: Proc
    ingests: list[Proc]
    agents: list[Agent]
    pub_key: Path
    monitor_port: int = 0
    # The monitor and notify: started by the harness once the agronomist is subscribed.
    people: list[Proc] = field(default_factory=list)
    mounts: list[Path] = field(default_factory=list)

    def all_procs(self) -> list[Proc]:
        return [self.registry, *self.ingests, *self.people, *(a.proc for a in self.agents)]

    def start_people(self) -> None:
        monitor = str(self.root / "monitor.toml")
        logs = self.root / "logs"
        self.people = [
            Proc("monitor", ["monitor", "--config", monitor, "--port", str(self.monitor_port)], logs),
            Proc("notify", ["notify", "--config", monitor], logs),
        ]
        for p in self.people:
            p.start()

    def stop(self) -> None:
        for a in self.agents:
            a.proc.stop()
        for p in [*self.ingests, *self.people]:
            p.stop()
        self.registry.stop()
        self.broker.stop()
        for m in self.mounts:
            subprocess.run(["umount", "-l", str(m)], check=False, capture_output=True)


def build_models(root: Path) -> tuple[Path, dict[str, Path]]:
    """Two signed versions of a tiny colour classifier (tests/edge_models.py: no torch needed)."""
    from tests.edge_models import build_classifier

    keys = root / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, version in enumerate((FIRST, SECOND)):
        built = build_classifier(root / "models" / version, name=MODEL, version=version, temperature=1.0 + i,
                                 key_dir=keys, min_agent_version="0.0.0")  # fmt: skip
        # 0.0.0: an agent run from a source tree (not pip-installed) reports version 0.0.0+unknown.
        out[version] = built.manifest_path
    return keys / "cropwatch-signing.pub", out


def run_cli(logs: Path, *args: str) -> None:
    with open(logs / "cli.log", "ab") as fh:
        fh.write(f"$ cropwatch {' '.join(args)}\n".encode())
        fh.flush()
        subprocess.run(cropwatch(*args), stdout=fh, stderr=subprocess.STDOUT, env=child_env(), check=True,
                       timeout=120)  # fmt: skip


def try_tmpfs(path: Path, size_mb: int) -> bool:
    """A small tmpfs for one agent's outbox (needs root); False where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
                          check=False, capture_output=True)  # fmt: skip
    return done.returncode == 0


def start_stack(root: Path, db_url: str, n_agents: int, rates: tuple[float, float]) -> Stack:
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pub, manifests = build_models(root)
    broker = Broker("127.0.0.1", free_port(), root / "broker",
                    [f"autosave_interval {AUTOSAVE_S}", "max_inflight_messages 64"])  # fmt: skip
    broker.workdir.mkdir(parents=True, exist_ok=True)
    broker.start()
    registry_dir = root / "registry"
    for manifest in manifests.values():
        run_cli(logs, "models", "--registry", str(registry_dir), "import", str(manifest), "--trusted-key", str(pub))
    reg_port = free_port()
    registry = Proc("registry", ["registry", "serve", "--root", str(registry_dir), "--port", str(reg_port)], logs)
    registry.start()
    monitor = root / "monitor.toml"
    monitor_port = free_port()
    monitor.write_text(MONITOR_TOML.format(url=db_url, port=broker.port, root=root, monitor_port=monitor_port,
                                           ack_secret=secrets.token_hex(24)), encoding="utf-8")  # fmt: skip
    run_cli(logs, "db", "--config", str(monitor), "migrate")
    ingests = [
        Proc(
            f"ingest-{x}",
            ["ingest", "--config", str(monitor)],
            logs,
            {"CROPWATCH_INGEST__CLIENT_ID": f"chaos-ingest-{x}"},
        )
        for x in ("a", "b")
    ]
    for p in ingests:
        p.start()
    stack = Stack(root, db_url, broker, reg_port, registry, ingests, [], pub, monitor_port)
    for i in range(n_agents):
        device = f"gw-{i}"
        folder = root / "agents" / device
        agent = Agent(i, device, folder, Proc(device, [], logs))
        # The first agent's outbox lives on a 6 MB tmpfs the harness can fill.
        if i == 0 and try_tmpfs(agent.state, 6):
            agent.tmpfs = True
            stack.mounts.append(agent.state)
        agent.state.mkdir(parents=True, exist_ok=True)
        agent.clock_file.write_text("0\n", encoding="utf-8")
        toml = folder / "agent.toml"
        toml.write_text(AGENT_TOML.format(
            state=agent.state, farm=FARM, device=device, i=i, port=broker.port, pub=pub, ledger=agent.ledger,
            budget_mb=3.0 if i == 0 else 50.0, cam_s=rates[0], sensor_s=rates[1], hold_s=2 * AUTOSAVE_S + 5,
        ), encoding="utf-8")  # fmt: skip
        agent.proc.args = ["agent", "--config", str(toml)]
        agent.proc.env = {"CROPWATCH_CLOCK_OFFSET_FILE": str(agent.clock_file)}
        agent.proc.start()
        stack.agents.append(agent)
    deadline = time.monotonic() + 30
    while not port_open("127.0.0.1", reg_port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the registry did not open port {reg_port}; see {logs}/registry.log")
        time.sleep(0.2)
    publish(stack, "publish", FIRST)
    return stack


def publish(stack: Stack, action: str, version: str | None = None) -> None:
    """``cropwatch models publish|rollback``: the retained desired-model message every agent follows."""
    args = ["models", "--registry", str(stack.root / "registry"), action, MODEL, *([version] if version else [])]
    args += ["--farm", FARM, "--broker", f"mqtt://127.0.0.1:{stack.broker.port}", "--db", stack.db_url,
             "--base-url", f"http://127.0.0.1:{stack.registry_port}"]  # fmt: skip
    with contextlib.suppress(subprocess.CalledProcessError):
        run_cli(stack.root / "logs", *args)
        return
    raise RuntimeError(f"'cropwatch {' '.join(args)}' failed; see {stack.root}/logs/cli.log")
