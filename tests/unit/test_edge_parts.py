"""Small parts of the agent: commands, systemd notify, sensors, backoff, config, the torch ban."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edge_agent.commands import CommandActions, CommandHandler
from edge_agent.config import load_agent_config
from edge_agent.sensors.serial_line import SerialReader, SerialReaderSettings, parse_line
from edge_agent.sensors.simulated import SimulatedReader, SimulatedReaderSettings
from edge_agent.systemd import Notifier
from edge_agent.transport import backoff_delays
from shared.messages import CaptureNow, Ping, SetLogLevel
from shared.topics import command_topic
from tests.services import cropwatch_cmd, cropwatch_env

REPO = Path(__file__).resolve().parents[2]


class Recorded:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, dict]] = []  # type: ignore[type-arg]
        self.calls: list[tuple[str, object]] = []

    def actions(self) -> CommandActions:
        return CommandActions(
            capture_now=lambda src: self.calls.append(("capture", src)) or ["cam"],  # type: ignore[func-returns-value]
            reload_config=lambda: self.calls.append(("reload", None)),  # type: ignore[func-returns-value]
            set_log_level=lambda lvl: self.calls.append(("level", lvl)),  # type: ignore[func-returns-value]
            event=lambda level, code, message, details=None: self.events.append((level, code, message, details or {})),
            count=lambda code: None,
        )


def test_commands_validate_dispatch_and_reject_without_raising() -> None:
    rec = Recorded()
    h = CommandHandler("farm1", "dev1", rec.actions())
    topic = lambda c: command_topic("farm1", "dev1", c)  # noqa: E731
    h.handle(topic("ping"), Ping(farm_id="farm1", device_id="dev1").to_json(), retained=False)
    h.handle(topic("set_log_level"), SetLogLevel(farm_id="farm1", device_id="dev1", level="debug").to_json(), False)
    h.handle(topic("capture_now"), CaptureNow(farm_id="farm1", device_id="dev1", source="cam").to_json(), False)
    assert rec.calls == [("level", "debug"), ("capture", "cam")]
    assert [e[1] for e in rec.events] == ["pong", "command_done", "command_done"]
    rec.events.clear()
    bad = [
        (topic("ping"), b"{not json"),
        (topic("ping"), b"[]"),
        (topic("ping"), SetLogLevel(farm_id="farm1", device_id="dev1", level="info").to_json()),  # topic mismatch
        (topic("ping"), Ping(farm_id="farm1", device_id="other").to_json()),
        ("cropwatch/v1/farm1/dev1/cmd/self_destruct", b"{}"),
        (topic("ping"), b'{"schema_version": 1, "kind": "command", "command": "format_disk"}'),
        (topic("ping"), b"\xff\xfe" * 10),
    ]
    for t, payload in bad:
        h.handle(t, payload, retained=False)
    reasons = [e[3]["reason"] for e in rec.events]
    assert reasons == ["invalid_json", "unknown_command", "kind_mismatch", "wrong_device", "unknown_command",
                       "unknown_command", "invalid_json"]  # fmt: skip
    assert all(e[0] == "error" and e[1] == "bad_command" for e in rec.events)
    rec.events.clear()
    h.handle(topic("ping"), Ping(farm_id="farm1", device_id="dev1").to_json(), retained=True)
    assert rec.events == [] and rec.calls == [("level", "debug"), ("capture", "cam")]


def test_systemd_notify_reaches_a_real_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        n = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "4000000"})
        assert n.enabled and n.watchdog_s == 4.0
        n.ready("2 models")
        n.watchdog()
        assert server.recv(1024) == b"READY=1\nSTATUS=2 models"
        assert server.recv(1024) == b"WATCHDOG=1"
    quiet = Notifier({})
    assert not quiet.enabled and quiet.notify("READY=1") is False


def test_sensor_line_protocol_over_a_real_pty() -> None:
    assert parse_line("soil_moisture=31.2, air_temperature=18.4 junk x=nan y=abc") == {
        "soil_moisture": 31.2,
        "air_temperature": 18.4,
    }
    master, slave = os.openpty()
    reader = SerialReader(SerialReaderSettings(port=os.ttyname(slave)))
    done = threading.Event()

    def microcontroller() -> None:
        # A probe sends a line every interval; pyserial flushes what arrived before the port opened.
        while not done.wait(0.05):
            os.write(master, b"relative_humidity=77.5 leaf_wetness=12\n")

    sender = threading.Thread(target=microcontroller, daemon=True)
    sender.start()
    try:
        assert reader.read() == {"relative_humidity": 77.5, "leaf_wetness": 12.0}
    finally:
        done.set()
        sender.join(timeout=5)
        reader.close()
        os.close(master)
        os.close(slave)
    sim = SimulatedReader(SimulatedReaderSettings(seed=1), clock=lambda: 12 * 3600.0).read()
    assert {"air_temperature", "relative_humidity", "soil_moisture", "leaf_wetness"} <= set(sim)


def test_backoff_grows_to_the_maximum_with_jitter() -> None:
    import random

    gen = backoff_delays(1.0, 30.0, random.Random(4))
    delays = [next(gen) for _ in range(12)]
    assert all(1.0 <= d <= 30.0 for d in delays)
    assert max(delays[:2]) <= 2.0 and max(delays[6:]) > 8.0
    assert len({round(d, 6) for d in delays}) == len(delays)  # jittered, never in lock-step


def test_check_config_prints_redacted_config_and_names_bad_keys(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("hunter2\n")
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        'data_dir = "data"\n[device]\nfarm_id = "farm1"\ndevice_id = "dev1"\n'
        '[mqtt]\nusername = "dev1"\npassword_file = "pw"\n'
        '[[sources]]\ntype = "folder"\nname = "drop"\npath = "inbox"\n'
    )
    out = subprocess.run(cropwatch_cmd("agent", "--config", str(cfg), "--check-config"), env=cropwatch_env(),
                         capture_output=True, text=True, timeout=60, cwd=REPO)  # fmt: skip
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["mqtt"]["password"] == "**********" and "hunter2" not in out.stdout
    assert doc["sources"][0]["path"] == str(tmp_path / "inbox")
    loaded = load_agent_config(cfg)
    assert loaded.mqtt.password.get_secret_value() == "hunter2"  # type: ignore[union-attr]
    cfg.write_text('[device]\nfarm_id = "Farm/1"\ndevice_id = "dev1"\n[[sources]]\ntype = "drone"\nname = "x"\n')
    bad = subprocess.run(cropwatch_cmd("agent", "--config", str(cfg), "--check-config"), env=cropwatch_env(),
                         capture_output=True, text=True, timeout=60, cwd=REPO)  # fmt: skip
    assert bad.returncode == 2
    assert "device.farm_id" in bad.stderr and "sources.0" in bad.stderr


BLOCKER = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch imported by " + repr(name))
sys.meta_path.insert(0, Block())
import pkgutil, importlib, edge_agent
for m in pkgutil.walk_packages(edge_agent.__path__, "edge_agent."):
    importlib.import_module(m.name)
assert not any(k == "torch" or k.startswith("torch.") for k in sys.modules)
print("ok", len([k for k in sys.modules if k.startswith("edge_agent")]))
"""


def test_importing_every_edge_agent_module_never_imports_torch() -> None:
    out = subprocess.run([sys.executable, "-c", BLOCKER], env=cropwatch_env(), capture_output=True, text=True,
                         timeout=120, cwd=REPO)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok") and int(out.stdout.split()[1]) >= 20


def test_only_the_transport_module_imports_paho() -> None:
    offenders = [
        p.relative_to(REPO).as_posix()
        for p in (REPO / "edge_agent").rglob("*.py")
        if "paho" in p.read_text() and p.name != "transport.py" and "import paho" in p.read_text()
    ]
    assert offenders == []


@pytest.fixture(autouse=True)
def _no_leaked_threads():  # type: ignore[no-untyped-def]
    before = threading.active_count()
    yield
    assert threading.active_count() <= before + 1


def test_camera_without_its_library_is_counted_not_fatal() -> None:
    import importlib.util

    from edge_agent.sources import build_source
    from edge_agent.sources.camera import CameraSettings

    if importlib.util.find_spec("cv2") is not None:
        pytest.skip("OpenCV is installed here; this checks the missing-library path")

    class Ctx:
        def __init__(self) -> None:
            self.stop_event = threading.Event()
            self.errors: list[str] = []

        def submit(self, item):  # type: ignore[no-untyped-def]
            raise AssertionError("nothing to submit without a camera")

        def is_seen(self, source: str, key: str) -> bool:
            return False

        def claim(self, source: str, key: str) -> bool:
            return True

        def release(self, source: str, key: str) -> None:
            pass

        def count_error(self, code: str) -> None:
            self.errors.append(code)

    ctx = Ctx()
    cam = build_source(CameraSettings(name="cam", device="rtsp://camera.local/stream", interval_s=3600), ctx)
    cam.start()
    cam.capture_now()
    cam.stop()
    assert ctx.errors and set(ctx.errors) == {"camera_library_missing"}


def test_the_documented_example_config_is_valid(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("secret\n")
    text = (REPO / "docs" / "agent.example.toml").read_text()
    (tmp_path / "agent.toml").write_text(text.replace("/etc/cropwatch/mqtt-password", str(tmp_path / "pw")))
    cfg = load_agent_config(tmp_path / "agent.toml", environ={})
    assert [s.type for s in cfg.sources] == ["folder", "camera", "sensors"]
    assert cfg.mqtt.tls.enabled and cfg.yield_model.variables["precipitation"].quantity == "rainfall"


def test_sample_policy_sends_shadow_disagreements_within_the_limits(tmp_path: Path) -> None:
    from edge_agent.config import SampleSettings
    from edge_agent.outbox import Outbox
    from edge_agent.sampling import SamplePolicy

    box = Outbox(tmp_path / "o.db", budget_bytes=10**7)
    now = 1_000_000.0
    policy = SamplePolicy(SampleSettings(confidence_below=0.5, max_per_hour=2, max_per_day=10), box, clock=lambda: now)
    # Confident and agreeing: nothing; confident but the challenger disagrees: a sample for labelling.
    assert policy.reason(0.9, requested=False, in_batch=0) is None
    assert policy.reason(0.9, requested=False, in_batch=0, disagree=True) == "shadow_disagreement"
    assert policy.reason(0.3, requested=False, in_batch=0, disagree=True) == "shadow_disagreement"
    assert policy.reason(0.3, requested=False, in_batch=0) == "low_confidence"
    # The hourly cap holds for disagreements too (one already logged, one in this batch); requests are never capped.
    box.add([], sample_at=[now - 60])
    assert policy.reason(0.9, requested=False, in_batch=1, disagree=True) is None and policy.capped == 1
    assert policy.reason(0.9, requested=True, in_batch=5, disagree=True) == "requested"
    policy.settings = SampleSettings(enabled=False)
    assert policy.reason(0.1, requested=False, in_batch=0, disagree=True) is None
