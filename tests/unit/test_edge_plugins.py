"""Plugin registries: discovery from each package, config errors that name the known types, plugins
from outside the project, and a config check that imports no optional runtime."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import AgentConfig, load_agent_config
from edge_agent.inference import BACKENDS
from edge_agent.sensors import READERS
from edge_agent.sources import SOURCES, ImageItem, ReadingsItem, build_source
from shared.config import redacted
from shared.errors import ConfigError
from tests.edge_helpers import to_toml

REPO = Path(__file__).resolve().parents[2]
DEVICE = {"farm_id": "farm1", "device_id": "dev1"}


def check(tmp_path: Path, **sections: Any) -> AgentConfig:
    path = tmp_path / "agent.toml"
    path.write_text(to_toml({"device": DEVICE, "data_dir": str(tmp_path / "data"), **sections}))
    return load_agent_config(path, environ={})


def test_each_kind_finds_its_plugins_in_its_package() -> None:
    assert BACKENDS.types() == ["onnxruntime"]
    assert SOURCES.types() == ["camera", "folder", "sensors", "simulated_camera"]
    assert READERS.types() == ["modbus_rtu", "modbus_tcp", "serial", "simulated"]


@pytest.mark.parametrize(
    ("sections", "where", "known"),
    [
        ({"sources": [{"type": "thermal", "name": "t"}]}, "sources.0", "camera, folder, sensors, simulated_camera"),
        ({"models": [{"type": "tflite", "manifest": "m.json"}]}, "models.0", "onnxruntime"),
        ({"sources": [{"type": "sensors", "name": "s", "reader": {"type": "modbus"}}]}, "sources.0.reader",
         "modbus_rtu, modbus_tcp, serial, simulated"),
    ],
)  # fmt: skip
def test_an_unknown_type_names_the_known_ones(tmp_path: Path, sections: dict[str, Any], where: str, known: str) -> None:
    with pytest.raises(ConfigError) as err:
        check(tmp_path, **sections)
    assert f"{where}: " in str(err.value) and f"is not known; known: {known}" in str(err.value)


def test_a_plugins_own_options_are_validated_and_printed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sources\.0\.after"):
        check(tmp_path, sources=[{"type": "folder", "name": "f", "path": "in", "after": "burn"}])
    cfg = check(
        tmp_path,
        models=[{"manifest": "m/manifest.json", "threads": 1}],  # no type: the default backend
        sources=[{"type": "folder", "name": "f", "path": "in"}, {"type": "sensors", "name": "env"}],
    )
    assert cfg.models[0].type == "onnxruntime" and cfg.models[0].manifest == tmp_path / "m" / "manifest.json"
    shown = redacted(cfg)
    assert shown["models"][0]["threads"] == 1 and shown["sources"][0]["path"] == str(tmp_path / "in")
    assert shown["sources"][1]["reader"] == {"type": "simulated", "seed": 0}
    # A channel without a unit reports the quantity's canonical one.
    assert [c["unit"] for c in shown["sources"][1]["channels"]] == ["%", "degC", "%", "%"]
    assert json.loads(cfg.model_dump_json())["sources"][0]["patterns"][0] == "*.jpg"


# A sensor reader and an image source from outside the project: one file each.
OUTSIDE = """
from typing import Literal

from edge_agent.sensors import READERS, ReaderSettings
from edge_agent.sources import SOURCES, ImageItem, SourceContext, SourceSettings, ThreadedSource


class FixedSettings(ReaderSettings):
    type: Literal["fixed_test"] = "fixed_test"
    value: float


class FixedReader:
    def __init__(self, settings: FixedSettings) -> None:
        self.settings = settings

    def read(self) -> dict[str, float]:
        return {"soil_moisture": self.settings.value}

    def close(self) -> None:
        pass


class BlankSettings(SourceSettings):
    type: Literal["blank_test"] = "blank_test"
    payload: str


class BlankSource(ThreadedSource):
    def __init__(self, settings: BlankSettings, ctx: SourceContext) -> None:
        super().__init__(settings.name, ctx)
        self.payload = settings.payload.encode()

    def tick(self, requested: bool) -> None:
        self.ctx.submit(ImageItem(source=self.name, data=self.payload, ref="blank://"))


READERS.register(FixedSettings, FixedReader)
SOURCES.register(BlankSettings, BlankSource)
"""


class Ctx:
    def __init__(self) -> None:
        self.stop_event = threading.Event()
        self.items: list[ImageItem | ReadingsItem] = []
        self.got = threading.Event()

    def submit(self, item: ImageItem | ReadingsItem) -> bool:
        self.items.append(item)
        self.got.set()
        return True

    def is_seen(self, source: str, key: str) -> bool:
        return False

    def claim(self, source: str, key: str) -> bool:
        return True

    def release(self, source: str, key: str) -> None:
        pass

    def count_error(self, code: str) -> None:
        raise AssertionError(code)


def test_plugins_from_outside_the_project_are_configured_by_type(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    name = f"cw_outside_{uuid.uuid4().hex[:8]}"
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / f"{name}.py").write_text(OUTSIDE)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    cfg = check(
        tmp_path,
        plugins={"modules": [name]},
        sources=[
            {"type": "blank_test", "name": "blank", "payload": "xyz"},
            {"type": "sensors", "name": "env", "reader": {"kind": "fixed_test", "value": 41.5}},
        ],
    )
    assert cfg.sources[0].produces_images and not cfg.sources[1].produces_images
    for settings in cfg.sources:
        ctx = Ctx()
        source = build_source(settings, ctx)
        source.start()
        assert ctx.got.wait(10)
        source.stop()
        item = ctx.items[0]
        if isinstance(item, ImageItem):
            assert item.data == b"xyz"
        else:
            assert [(r.quantity, r.value, r.unit) for r in item.readings] == [("soil_moisture", 41.5, "%")]


def test_a_plugin_module_that_does_not_import_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot import 'no_such_cropwatch_plugin'"):
        check(tmp_path, plugins={"modules": ["no_such_cropwatch_plugin"]})


def test_a_type_registered_twice_is_refused() -> None:
    from edge_agent.sources.folder import FolderSettings, FolderWatcher

    class Impostor(FolderSettings):
        pass

    with pytest.raises(ValueError, match="registered twice"):
        SOURCES.register(Impostor, FolderWatcher)


def test_checking_a_config_imports_no_optional_runtime(tmp_path: Path) -> None:
    doc = {
        "device": DEVICE,
        "models": [{"manifest": "m.json"}],
        "sources": [
            {"type": "camera", "name": "cam"},
            {"type": "sensors", "name": "env", "reader": {"type": "serial"}},
            {"type": "folder", "name": "f", "path": "in"},
        ],
    }
    code = (
        "import json, sys\n"
        "from edge_agent.config import AgentConfig\n"
        f"AgentConfig.model_validate(json.loads({json.dumps(json.dumps(doc))}))\n"
        "print(json.dumps(sorted(m for m in ('onnxruntime', 'cv2', 'serial', 'picamera2') if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
