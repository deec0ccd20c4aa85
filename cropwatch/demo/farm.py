"""``cropwatch demo``: a demo farm on this machine, on embedded defaults.

What runs, each as its own process, all stopped by Ctrl-C:

1. an MQTT v5 broker (``cropwatch broker``: Mosquitto with persistence) on a free port, unless
   ``--broker`` names one;
2. the disease model: synthetic leaves are drawn, EfficientNet-Lite0 is fine-tuned from the
   offline ImageNet weights, exported to signed ONNX and imported into a registry folder, which
   ``cropwatch registry serve`` serves; a second run reuses all of it;
3. ``cropwatch ingest`` storing every message in SQLite (``var/demo/cropwatch.db``);
4. simulated field devices, each a real ``cropwatch agent`` with a watched folder (the demo drops
   held-out synthetic leaf photos into it, like a camera trap) and simulated soil/air sensors;
5. the farm monitor at http://localhost:8501, with demo logins printed;
6. the yield model, built in the background once the disease model is published (a synthetic
   season cube, ``cropwatch train yield``, signed ONNX export; under a minute), imported and
   published through the same rollout path; the agents' yield runners start with it and their
   estimates reach the database. A second run reuses it too.

The console shows progress throughout and then live counts from the database.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

logger = logging.getLogger(__name__)

FARM_ID = "demo-farm"
DEVICE_IDS = ("gw-north", "gw-south", "gw-orchard", "gw-east", "gw-west")
FIELDS = ("north-field", "south-field", "orchard", "east-field", "west-field")
MODEL_NAME = "leaf-disease"
MODEL_VERSION = "0.1.0-demo"
CLASSES, PER_CLASS, FIELD_PHOTOS_PER_CLASS, IMAGE_SIZE, EPOCHS = 6, 40, 8, 128, 10
YIELD_NAME, YIELD_VERSION, YIELD_CROP = "crop-yield", "0.1.0-demo", "corn"
# A small cube and a short training: the demo shows the path, not a good model (docs/yield-model.md).
YIELD_CUBE_ARGS = "--fields 20 --seasons 3 --seed 1"
YIELD_TRAIN_ARGS = "--epochs 15 --hidden 16 --threads 1 --no-plots --quiet --seed 0"
YIELD_INTERVAL_S = 120.0
# Mid-season, so the outlook is a forecast: the season started this many days before the demo.
SEASON_DAYS_AGO = 45


@dataclass
class Stack:
    """The processes the demo started, stopped in reverse order."""

    logs: Path
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # Ctrl-C reaches the demo only; it stops the children in order
        )
        self.procs.append((name, proc))
        return proc

    def dead(self) -> list[str]:
        return [name for name, proc in self.procs if proc.poll() is not None]

    def stop(self) -> None:
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for name, proc in reversed(self.procs):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop in time; killing it", name)
                proc.kill()
                proc.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


def _wait(condition, timeout: float, what: str, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        dead = stack.dead()
        if dead:
            raise RuntimeError(f"{', '.join(dead)} stopped; see {stack.logs}/{dead[0]}.log")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}; logs in {stack.logs}")
        time.sleep(0.1)


def _run_step(console, title: str, args: list[str]) -> None:  # type: ignore[no-untyped-def]
    """A one-off command whose progress bars the user should see."""
    console.rule(title)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "shared.cli", *args], check=False)
    if result.returncode != 0:
        raise RuntimeError(f"'cropwatch {' '.join(args)}' failed with exit code {result.returncode}")
    console.print(f"[green]done[/green] in {time.monotonic() - started:.0f} s")


def build_model(root: Path, console) -> tuple[Path, Path, Path]:  # type: ignore[no-untyped-def]
    """Public signing key, exported manifest and held-out field photos; built once, reused after."""
    keys, manifest = root / "keys", root / "run" / "export" / "manifest.json"
    field_photos = root / "field-photos"
    if not (keys / "cropwatch-signing.key").exists():
        _run_step(console, "signing key", ["keys", "generate", "--out", str(keys)])
    public_key = keys / "cropwatch-signing.pub"
    if manifest.exists() and field_photos.is_dir():
        console.print(f"reusing the model from the first run: {manifest}")
        return public_key, manifest, field_photos
    leaves = root / "synthetic-leaves"
    if not leaves.is_dir():
        _run_step(
            console,
            f"drawing {CLASSES} x {PER_CLASS} synthetic leaves (marked synthetic)",
            [
                "data",
                "synth-leaves",
                str(leaves),
                *f"--classes {CLASSES} --per-class {PER_CLASS} --size {IMAGE_SIZE} --seed 1".split(),
            ],
        )
    if not field_photos.is_dir():
        tmp = root / "field-photos.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        _run_step(
            console,
            "drawing held-out 'field photos' for the simulated camera traps",
            [
                "data",
                "synth-leaves",
                str(tmp),
                *f"--classes {CLASSES} --per-class {FIELD_PHOTOS_PER_CLASS} --size 320 --seed 2 --quiet".split(),
            ],
        )
        tmp.rename(field_photos)
    run = root / "run"
    if not (run / "run.json").exists():
        shutil.rmtree(run, ignore_errors=True)
        _run_step(
            console,
            "fine-tuning EfficientNet-Lite0 from the offline ImageNet weights (CPU, a few minutes)",
            [
                "train",
                "disease",
                "--data",
                str(leaves),
                "--arch",
                "tf_efficientnet_lite0",
                "--epochs",
                str(EPOCHS),
                "--image-size",
                str(IMAGE_SIZE),
                "--batch-size",
                "16",
                "--out",
                str(run),
                "--patience",
                "3",
            ],
        )
    _run_step(
        console,
        "exporting signed ONNX (fp32 + int8) and checking it against torch",
        [
            "export",
            str(run),
            "--key",
            str(keys / "cropwatch-signing.key"),
            "--name",
            MODEL_NAME,
            "--version",
            MODEL_VERSION,
        ],
    )
    return public_key, manifest, field_photos


# Steps running in the background build, so stopping the demo can stop them too.
_background_steps: list[subprocess.Popen[bytes]] = []


def _quiet_step(log: Path, args: list[str]) -> None:
    """A one-off command run beside the live farm: its output goes to a log, not over the live table."""
    with open(log, "ab") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "shared.cli", *args], stdout=fh, stderr=subprocess.STDOUT)
        _background_steps.append(proc)
        code = proc.wait()
    if code != 0:
        raise RuntimeError(f"'cropwatch {' '.join(args)}' failed with exit code {code}; see {log}")


def stop_background_steps() -> None:
    for proc in _background_steps:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def build_yield_model(root: Path, console, log: Path) -> Path:  # type: ignore[no-untyped-def]
    """The exported yield model's manifest: synthetic cube, training, signed export; built once, reused after."""
    folder, keys = root / "yield", root / "keys"
    manifest = folder / "run" / "export" / "manifest.json"
    if manifest.exists():
        console.print(f"yield model: reusing the one from the first run: {manifest}")
        return manifest
    folder.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    cube = folder / "season-cube.nc"
    if not cube.exists():
        console.print("yield model: drawing a synthetic season cube (20 fields x 3 seasons, marked synthetic)")
        _quiet_step(log, ["data", "synth-yield", str(folder / "season-cube.tmp.nc"), *YIELD_CUBE_ARGS.split()])
        os.replace(folder / "season-cube.tmp.nc", cube)
    run = folder / "run"
    if not (run / "best.pt").exists():
        shutil.rmtree(run, ignore_errors=True)
        console.print(f"yield model: training the season network on the CPU (progress in {log})")
        _quiet_step(log, ["train", "yield", "--cube", str(cube), "--output-dir", str(run), *YIELD_TRAIN_ARGS.split()])
    console.print("yield model: exporting signed ONNX and checking it against torch")
    _quiet_step(log, ["export", str(run), "--key", str(keys / "cropwatch-signing.key"),
                      "--name", YIELD_NAME, "--version", YIELD_VERSION])  # fmt: skip
    console.print(f"yield model: built in {time.monotonic() - started:.0f} s")
    return manifest


class Background:
    """One function on a thread; the demo's loop polls it, so the farm keeps running meanwhile."""

    def __init__(self, target, *args) -> None:  # type: ignore[no-untyped-def]
        self.result: Path | None = None
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._run, args=(target, *args), name="yield-build", daemon=True)
        self._thread.start()

    def _run(self, target, *args) -> None:  # type: ignore[no-untyped-def]
        try:
            self.result = target(*args)
        except Exception as exc:  # reported by the loop; the demo goes on without a yield model
            self.error = exc

    def done(self) -> bool:
        return not self._thread.is_alive()


def season_start() -> str:
    from datetime import date, timedelta

    return (date.today() - timedelta(days=SEASON_DAYS_AGO)).isoformat()


def demo_key(root: Path) -> Path:
    """The demo's signing key pair (made once); returns the public key. The yield model is signed with it."""
    from shared.manifest import generate_keypair

    keys = root / "keys"
    if not (keys / "cropwatch-signing.key").exists():
        generate_keypair(keys)
    return keys / "cropwatch-signing.pub"


def agent_toml(root: Path, device_id: str, field_id: str, host: str, port: int, public_keys: list[Path]) -> Path:
    folder = root / "agents" / device_id
    (folder / "inbox").mkdir(parents=True, exist_ok=True)
    text = f"""# made by cropwatch demo
data_dir = "state"
shutdown_deadline_s = 10.0

[device]
farm_id = "{FARM_ID}"
device_id = "{device_id}"
field_id = "{field_id}"

[mqtt]
host = "{host}"
port = {port}

[trust]
public_keys = [{", ".join(f'"{k}"' for k in public_keys)}]

# No model here: the demo publishes one through the rollout path (retained desired-model
# message, download from the registry, signature and self-test, swap).
[updates]
enabled = true
health_window_s = 30.0

# The yield model comes over the air too; the runner starts when it arrives.
[yield]
enabled = true
season_start = "{season_start()}"
crop = "{YIELD_CROP}"
interval_s = {YIELD_INTERVAL_S}
# One round of the simulated sensors (every 15 s) is in by then; a second run shows an outlook at once.
first_run_s = 20.0

# The simulated probe reads percent; the model's soil_moisture.mean is in m3 m-3.
[yield.variables."soil_moisture.mean"]
quantity = "soil_moisture"
aggregate = "mean"
scale = 0.01

[[sources]]
type = "folder"
name = "trap"
path = "inbox"
after = "delete"
scan_interval_s = 1.0
settle_s = 0.2

[[sources]]
type = "sensors"
name = "soil"
interval_s = 15.0

[sources.reader]
kind = "simulated"
seed = {abs(hash(device_id)) % 1000}

[[sources.channels]]
sensor = "soil1"
quantity = "soil_moisture"
unit = "%"

[[sources.channels]]
sensor = "air1"
quantity = "air_temperature"
unit = "degC"

[samples]
confidence_below = 0.7
max_per_hour = 20

[heartbeat]
interval_s = 10.0

[log]
format = "text"
"""
    path = folder / "agent.toml"
    path.write_text(text, encoding="utf-8")
    return path


def monitor_toml(root: Path, host: str, port: int) -> Path:
    path = root / "monitor.toml"
    path.write_text(
        f"""# made by cropwatch demo
[database]
url = "sqlite:///{root / "cropwatch.db"}"

[mqtt]
host = "{host}"
port = {port}

[metrics]
port = 0

[app]
users_file = "{root / "monitor-users.json"}"
farm_file = "{root / "farm.geojson"}"
registry = "{root / "registry"}"
refresh_s = 10
cache_ttl_s = 5
""",
        encoding="utf-8",
    )
    return path


def farm_layout(root: Path, devices: tuple[str, ...]) -> Path:
    """Demo fields near Ames, Iowa: one square field per device, the device in its middle."""
    import json

    features = []
    for i, device_id in enumerate(devices):
        lon, lat = -93.62 + 0.012 * (i % 3), 42.03 + 0.009 * (i // 3)
        d = 0.004
        ring = [[lon - d, lat - d], [lon + d, lat - d], [lon + d, lat + d], [lon - d, lat + d], [lon - d, lat - d]]
        field_id = FIELDS[i]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"kind": "field", "farm_id": FARM_ID, "field_id": field_id,
                               "name": field_id.replace("-", " ").title(), "crop": YIELD_CROP,
                               "planting_date": season_start()},
            }
        )  # fmt: skip
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [lon, lat]},
                "properties": {"kind": "device", "farm_id": FARM_ID, "device_id": device_id, "field_id": field_id},
            }
        )
    path = root / "farm.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}, indent=1), encoding="utf-8")
    return path


DEMO_USERS = (("agronomist", "agronomist"), ("farmer", "farmer"), ("admin", "admin"))
DEMO_PASSWORD = "cropwatch-demo"


def demo_users(root: Path) -> None:
    if (root / "monitor-users.json").exists():
        return
    for name, role in DEMO_USERS:
        subprocess.run(
            [sys.executable, "-m", "shared.cli", "users", "--file", str(root / "monitor-users.json"), "add", name,
             "--role", role, "--farm", FARM_ID, "--password-env", "CROPWATCH_DEMO_PASSWORD"],
            env={**os.environ, "CROPWATCH_DEMO_PASSWORD": DEMO_PASSWORD},
            check=True,
            capture_output=True,
        )  # fmt: skip


def counts(db: Path) -> dict[str, int]:
    import sqlite3

    out = {"detections": 0, "yield_estimates": 0, "telemetry": 0, "samples": 0, "devices": 0}
    if not db.exists():
        return out
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as conn:
        for table in out:
            with contextlib.suppress(sqlite3.Error):
                out[table] = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    return out


def by_class(db: Path) -> list[tuple[str, int]]:
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as conn:
        try:
            return conn.execute("SELECT label, COUNT(*) FROM detections GROUP BY label ORDER BY 2 DESC").fetchall()
        except sqlite3.Error:
            return []


def import_model(registry: Path, manifest: Path, public_key: Path) -> None:
    """Into the demo registry (a no-op when the same version is there already)."""
    subprocess.run(
        [sys.executable, "-m", "shared.cli", "models", "--registry", str(registry), "import", str(manifest),
         "--trusted-key", str(public_key)],
        check=True,
        capture_output=True,
    )  # fmt: skip


def publish_model(registry: Path, manifest: Path, broker_url: str, base_url: str) -> tuple[str, str]:
    """Through the real rollout path: the retained desired-model message the agents act on."""
    doc = json.loads(manifest.read_text(encoding="utf-8"))
    subprocess.run(
        [sys.executable, "-m", "shared.cli", "models", "--registry", str(registry), "publish", doc["name"],
         doc["version"], "--farm", FARM_ID, "--broker", broker_url, "--base-url", base_url],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return doc["name"], doc["version"]


def run_demo(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    root: Path = args.data_dir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    stack = Stack(root / "logs")
    started = time.monotonic()
    stop_requested = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if args.model_manifest:
            public_key, manifest, photos = (
                args.trusted_key.resolve(),
                args.model_manifest.resolve(),
                args.photos.resolve(),
            )
        else:
            public_key, manifest, photos = build_model(root, console)
        console.rule("starting the farm")
        if args.broker:
            url = urlparse(args.broker)
            host, port = url.hostname or "127.0.0.1", url.port or 1883
        else:
            host, port = "127.0.0.1", _free_port()
            stack.start("broker", ["broker", "--port", str(port), "--data-dir", str(root / "broker")])
            _wait(lambda: _port_open(host, port), 30, "the broker", stack)
        console.print(f"broker      mqtt://{host}:{port}")

        registry = root / "registry"
        import_model(registry, manifest, public_key)
        yield_key = demo_key(root)
        trusted = sorted({public_key, yield_key})
        registry_port = _free_port()
        stack.start("registry", ["registry", "serve", "--root", str(registry), "--port", str(registry_port)])
        console.print(f"registry    http://127.0.0.1:{registry_port}/index.json")

        stack.start("ingest", ["ingest", "--config", str(monitor_toml(root, host, port))])
        console.print(f"ingest      -> {root / 'cropwatch.db'}")
        devices = DEVICE_IDS[: args.devices]
        inboxes = []
        for device_id, field_id in zip(devices, FIELDS, strict=False):
            config = agent_toml(root, device_id, field_id, host, port, trusted)
            stack.start(f"agent-{device_id}", ["agent", "--config", str(config)])
            inboxes.append(config.parent / "inbox")
        console.print(f"agents      {', '.join(devices)} (farm {FARM_ID})")
        broker_url, base_url = f"mqtt://{host}:{port}", f"http://127.0.0.1:{registry_port}"
        name, version = publish_model(registry, manifest, broker_url, base_url)
        console.print(f"rollout     {name} {version} published to {FARM_ID}; agents download, verify and swap it in")
        # After the disease model is out, so it never delays the first detection.
        yield_build = None
        if not args.no_yield:
            yield_build = Background(build_yield_model, root, console, stack.logs / "yield-build.log")

        if not args.no_monitor:
            farm_layout(root, devices)
            demo_users(root)
            stack.start("monitor", ["monitor", "--config", str(root / "monitor.toml"), "--port", str(args.port)])
            console.print(
                f"monitor     [bold]http://localhost:{args.port}[/bold]  log in as agronomist (or farmer, admin), "
                f"password {DEMO_PASSWORD}"
            )
        console.print(f"logs        {stack.logs}")

        pictures = sorted(p for p in photos.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not pictures:
            raise RuntimeError(f"no photos in {photos}")
        rng = random.Random(7)
        # The database outlives a run: count only what this run stores.
        before = counts(root / "cropwatch.db")
        already, yields_before = before["detections"], before["yield_estimates"]
        first_detection: float | None = None
        # None: no yield model expected (--no-yield, or its build failed); else when the first estimate came.
        first_yield: float | None = None
        yield_pending = yield_build is not None
        last_drop = 0.0
        last_print = 0.0
        while not stop_requested:
            dead = stack.dead()
            if dead:
                raise RuntimeError(f"{', '.join(dead)} stopped; see {stack.logs}/{dead[0]}.log")
            now = time.monotonic()
            if now - last_drop >= args.photo_interval:
                for inbox in inboxes:
                    # Copied under a hidden name, then renamed: the agent never sees half a photo.
                    src = rng.choice(pictures)
                    name = f"{src.stem}-{int(now * 1000)}{src.suffix}"
                    shutil.copyfile(src, inbox / f".{name}.part")
                    os.replace(inbox / f".{name}.part", inbox / name)
                last_drop = now
            if yield_build is not None and yield_build.done():
                try:
                    if yield_build.error is not None:
                        raise yield_build.error
                    assert yield_build.result is not None
                    import_model(registry, yield_build.result, yield_key)
                    y_name, y_version = publish_model(registry, yield_build.result, broker_url, base_url)
                    console.print(f"rollout     {y_name} {y_version} published to {FARM_ID}; the yield runners start")
                except Exception as exc:  # the yield model is an extra: the farm goes on without it
                    detail = str(exc)
                    stderr = getattr(exc, "stderr", None)
                    if stderr:
                        text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else str(stderr)
                        detail += ": " + text.strip()[-500:]
                    console.print(f"[yellow]no yield model[/yellow] ({detail}); the farm runs without it")
                    yield_pending = False
                yield_build = None
            c = counts(root / "cropwatch.db")
            if first_detection is None and c["detections"] > already:
                first_detection = now
                console.print(f"[bold green]first detection stored[/bold green] {now - started:.0f} s after start")
            if yield_pending and first_yield is None and c["yield_estimates"] > yields_before:
                first_yield, yield_pending = now, False
                console.print(f"[bold green]first yield estimate stored[/bold green] {now - started:.0f} s after start")
            if now - last_print >= 10 or (first_detection == now):
                table = Table(title=f"{FARM_ID}: {now - started:.0f} s", show_edge=False)
                for name in c:
                    table.add_column(name, justify="right")
                table.add_row(*(str(v) for v in c.values()))
                console.print(table)
                last_print = now
            # --duration counts from the first detection, and waits for the yield model when one is coming.
            if (
                first_detection is not None
                and not yield_pending
                and args.duration
                and now - max(first_detection, first_yield or 0.0) >= args.duration
            ):
                break
            if yield_pending and first_detection is not None and now - started > args.first_detection_timeout:
                raise RuntimeError(f"no yield estimate reached the database; see {stack.logs}/yield-build.log")
            if first_detection is None and now - started > args.first_detection_timeout:
                raise RuntimeError(
                    f"no detection reached the database within {args.first_detection_timeout:.0f} s; "
                    f"see the agent and ingest logs in {stack.logs}"
                )
            time.sleep(0.5)
        console.rule("stopping")
        classes = by_class(root / "cropwatch.db")
        if classes:
            console.print("detections by class: " + ", ".join(f"{label} {n}" for label, n in classes))
        return 0 if first_detection is not None or stop_requested else 1
    except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
        console.print(f"[red]demo failed:[/red] {exc}")
        return 1
    finally:
        stop_background_steps()
        stack.stop()
        console.print("all demo processes stopped")


def main(argv: list[str], prog: str = "cropwatch demo") -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--broker", help="use this MQTT v5 broker (mqtt://host:port) instead of starting one")
    parser.add_argument("--data-dir", type=Path, default=Path("var/demo"), help="state of the demo (reused)")
    parser.add_argument("--devices", type=int, default=3, choices=range(1, len(DEVICE_IDS) + 1))
    parser.add_argument("--photo-interval", type=float, default=5.0, help="seconds between photos per device")
    parser.add_argument("--duration", type=float, help="stop this many seconds after the first detection")
    parser.add_argument("--no-monitor", action="store_true", help="do not start the web monitor")
    parser.add_argument("--no-yield", action="store_true", help="do not build and publish the yield model")
    parser.add_argument(
        "--first-detection-timeout", type=float, default=900.0, help="give up when no detection arrives by then (s)"
    )
    parser.add_argument("--port", type=int, default=8501, help="web monitor port (default 8501)")
    parser.add_argument("--model-manifest", type=Path, help=argparse.SUPPRESS)  # tests: a prepared model
    parser.add_argument("--trusted-key", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--photos", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if not args.broker and not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        print(f"{prog}: needs an MQTT v5 broker: install mosquitto or pass --broker", file=sys.stderr)
        return 1
    return run_demo(args)
