"""The demo farm's run: start every component in order, drop photos, watch the database, stop."""

from __future__ import annotations

import argparse
import functools
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from shared.display_names import display_name
from shared.manifest import ModelManifest

from .configs import agent_toml, demo_key, demo_users, farm_layout, monitor_toml
from .console import counts, failure_detail, has_tables, latest_detection, print_by_class, print_counts
from .leaves import reshoot
from .lorawan import LorawanSensor
from .mailbox import DemoMailbox, start_notifications
from .modbus_probe import start_demo_probe
from .models import build_model, build_yield_model, import_model, publish_model
from .processes import Background, Stack, free_port, port_open, stop_background_steps, wait_until
from .settings import DEMO_PASSWORD, DEVICE_IDS, FARM_ID, FIELDS

if TYPE_CHECKING:
    from rich.console import Console


@dataclass
class Farm:
    """The running farm: where things are and how to reach them."""

    root: Path
    stack: Stack
    registry: Path
    broker_url: str
    base_url: str
    yield_key: Path
    inboxes: list[Path] = field(default_factory=list)

    @property
    def db(self) -> Path:
        return self.root / "cropwatch.db"


def _start_broker(args: argparse.Namespace, root: Path, stack: Stack) -> tuple[str, int]:
    if args.broker:
        url = urlparse(args.broker)
        return url.hostname or "127.0.0.1", url.port or 1883
    host, port = "127.0.0.1", free_port()
    stack.start("broker", ["broker", "--port", str(port), "--data-dir", str(root / "broker")])
    wait_until(lambda: port_open(host, port), 30, "the broker", stack)
    return host, port


def start_farm(args: argparse.Namespace, console: Console, root: Path, stack: Stack,
               manifest: Path, public_key: Path) -> Farm:  # fmt: skip
    """Broker, registry, ingest and agents, then the disease model published to them."""
    console.rule("starting the farm")
    host, port = _start_broker(args, root, stack)
    console.print(f"broker      mqtt://{host}:{port}")

    registry = root / "registry"
    import_model(registry, manifest, public_key)
    yield_key = demo_key(root)
    trusted = sorted({public_key, yield_key})
    registry_port = free_port()
    stack.start("registry", ["registry", "serve", "--root", str(registry), "--port", str(registry_port)])
    console.print(f"registry    http://127.0.0.1:{registry_port}/index.json")
    farm = Farm(root, stack, registry, f"mqtt://{host}:{port}", f"http://127.0.0.1:{registry_port}", yield_key)

    stack.start("ingest", ["ingest", "--config", str(monitor_toml(root, host, port, args.port))])
    console.print(f"ingest      -> {farm.db}")
    devices = DEVICE_IDS[: args.devices]
    for device_id, field_id in zip(devices, FIELDS, strict=False):
        config = agent_toml(root, device_id, field_id, host, port, trusted)
        if device_id == devices[0]:  # one simulated Modbus bus (two probes) beside the simulated sensors
            start_demo_probe(config, free_port())
        stack.start(f"agent-{device_id}", ["agent", "--config", str(config)])
        farm.inboxes.append(config.parent / "inbox")
    console.print(f"agents      {', '.join(devices)} (farm {FARM_ID})")
    # The publish records the manifest in the database ingest creates: wait for its tables first.
    wait_until(lambda: has_tables(farm.db), 60, "ingest to create its database", stack)
    name, version = publish_model(registry, manifest, farm.broker_url, farm.base_url, farm.db)
    console.print(f"rollout     {name} {version} published to {FARM_ID}; agents download, verify and swap it in")
    return farm


def start_monitor(args: argparse.Namespace, console: Console, farm: Farm) -> None:
    farm_layout(farm.root, DEVICE_IDS[: args.devices])
    demo_users(farm.root)
    farm.stack.start("monitor", ["monitor", "--config", str(farm.root / "monitor.toml"), "--port", str(args.port)])
    console.print(
        f"monitor     [bold]http://localhost:{args.port}[/bold]  log in as agronomist (or farmer, admin), "
        f"password {DEMO_PASSWORD}"
    )


def drop_photos(inboxes: list[Path], pictures: list[Path], rng: random.Random, now: float) -> None:
    for inbox in inboxes:
        # A fresh shot of a held-out photo (rotated, rescaled, re-lit), written under a hidden name
        # and then renamed: the agent never sees half a photo.
        src = rng.choice(pictures)
        name = f"{src.stem}-{int(now * 1000)}.jpg"
        (inbox / f".{name}.part").write_bytes(reshoot(src, rng))
        os.replace(inbox / f".{name}.part", inbox / name)


def publish_yield(console: Console, farm: Farm, build: Background) -> bool:
    """Import and publish the finished yield model; False when it could not be built or published."""
    try:
        if build.error is not None:
            raise build.error
        assert build.result is not None
        import_model(farm.registry, build.result, farm.yield_key)
        name, version = publish_model(farm.registry, build.result, farm.broker_url, farm.base_url, farm.db)
        console.print(f"rollout     {name} {version} published to {FARM_ID}; the yield runners start")
        return True
    except Exception as exc:  # the yield model is an extra: the farm goes on without it
        console.print(f"[yellow]no yield model[/yellow] ({failure_detail(exc)}); the farm runs without it")
        return False


@dataclass
class Watch:
    """The live loop's state: photos dropped, counts seen, the yield build polled."""

    args: argparse.Namespace
    console: Console
    farm: Farm
    pictures: list[Path]
    yield_build: Background | None
    started: float
    names: Mapping[str, str] | None = None  # the model's display names
    # Unseeded: each run's camera frames differ from every earlier run's too.
    rng: random.Random = field(default_factory=random.Random)
    already: int = 0
    yields_before: int = 0
    first_detection: float | None = None
    # None: no yield model expected (--no-yield, or its build failed); else when the first estimate came.
    first_yield: float | None = None
    yield_pending: bool = False
    last_drop: float = 0.0
    last_print: float = 0.0

    def __post_init__(self) -> None:
        # The database outlives a run: count only what this run stores.
        before = counts(self.farm.db)
        self.already, self.yields_before = before["detections"], before["yield_estimates"]
        self.yield_pending = self.yield_build is not None

    def tick(self, now: float) -> bool:
        """One round of the loop; True when the demo has run for --duration."""
        self.farm.stack.raise_if_dead()
        if now - self.last_drop >= self.args.photo_interval:
            drop_photos(self.farm.inboxes, self.pictures, self.rng, now)
            self.last_drop = now
        if self.yield_build is not None and self.yield_build.done():
            if not publish_yield(self.console, self.farm, self.yield_build):
                self.yield_pending = False
            self.yield_build = None
        self._note_counts(now)
        return self._finished(now)

    def _note_counts(self, now: float) -> None:
        c = counts(self.farm.db)
        if self.first_detection is None and c["detections"] > self.already:
            self.first_detection = now
            latest = latest_detection(self.farm.db)
            what = f": {display_name(latest[0], self.names)} on {latest[1]} ({latest[2]:.0%})" if latest else ""
            self.console.print(
                f"[bold green]first detection stored[/bold green] {now - self.started:.0f} s after start{what}"
            )
        if self.yield_pending and self.first_yield is None and c["yield_estimates"] > self.yields_before:
            self.first_yield, self.yield_pending = now, False
            self.console.print(
                f"[bold green]first yield estimate stored[/bold green] {now - self.started:.0f} s after start"
            )
        if now - self.last_print >= 10 or self.first_detection == now:
            print_counts(self.console, now - self.started, c)
            self.last_print = now

    def _finished(self, now: float) -> bool:
        args, first = self.args, self.first_detection
        # --duration counts from the first detection, and waits for the yield model when one is coming.
        waited = now - max(first, self.first_yield or 0.0) if first is not None else 0.0
        if first is not None and not self.yield_pending and args.duration and waited >= args.duration:
            return True
        if self.yield_pending and first is not None and now - self.started > args.first_detection_timeout:
            raise RuntimeError(f"no yield estimate reached the database; see {self.farm.stack.logs}/yield-build.log")
        if first is None and now - self.started > args.first_detection_timeout:
            raise RuntimeError(
                f"no detection reached the database within {args.first_detection_timeout:.0f} s; "
                f"see the agent and ingest logs in {self.farm.stack.logs}"
            )
        return False


def _model(args: argparse.Namespace, root: Path, console: Console) -> tuple[Path, Path, Path]:
    """Public key, manifest and field photos: prepared ones (tests) or the demo's own."""
    if args.model_manifest:
        return args.trusted_key.resolve(), args.model_manifest.resolve(), args.photos.resolve()
    return build_model(root, console)


def run_demo(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    root: Path = args.data_dir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    stack = Stack(root / "logs")
    lorawan: LorawanSensor | None = None
    mailbox: DemoMailbox | None = None
    started = time.monotonic()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    signal.signal(signal.SIGINT, lambda _signum, _frame: stop.set())
    try:
        public_key, manifest, photos = _model(args, root, console)
        farm = start_farm(args, console, root, stack, manifest, public_key)
        broker = urlparse(farm.broker_url)
        lorawan = LorawanSensor(root, broker.hostname or "127.0.0.1", broker.port or 1883, stack)
        console.print("lorawan     a simulated soil probe's ChirpStack uplinks, bridged to lora-soil-1")
        # After the disease model is out, so it never delays the first detection.
        yield_build = None
        if not args.no_yield:
            build = functools.partial(build_yield_model, root, console, stack.logs / "yield-build.log")
            yield_build = Background(build, name="yield-build")
        mailbox = start_notifications(root, console, stack)
        if not args.no_monitor:
            start_monitor(args, console, farm)
        console.print(f"logs        {stack.logs}")
        pictures = sorted(p for p in photos.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not pictures:
            raise RuntimeError(f"no photos in {photos}")
        names = ModelManifest.load(manifest).display_names
        watch = Watch(args, console, farm, pictures, yield_build, started, names)
        while not stop.is_set() and not watch.tick(time.monotonic()):
            time.sleep(0.5)
        console.rule("stopping")
        print_by_class(console, farm.db, names)
        return 0 if watch.first_detection is not None or stop.is_set() else 1
    except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
        console.print(f"[red]demo failed:[/red] {exc}")
        return 1
    finally:
        if lorawan is not None:
            lorawan.stop()
        if mailbox is not None:
            mailbox.stop()
        stop_background_steps()
        stack.stop()
        console.print("all demo processes stopped")
