from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import Broker, missing_service, mosquitto_binary, port_open, postgres_schema, private_mosquitto

REPO_ROOT = Path(__file__).resolve().parent.parent
TEAM_DATA = REPO_ROOT.parent / "shared" / "data"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The folder a test lives in is its marker, so no test can forget one.
    for item in items:
        parts = Path(str(item.fspath)).parts
        for marker in ("unit", "integration", "e2e"):
            if marker in parts:
                item.add_marker(getattr(pytest.mark, marker))
        if "gpu" in item.keywords:
            try:
                import torch

                has_cuda = torch.cuda.is_available()
            except ModuleNotFoundError:
                has_cuda = False
            if not has_cuda:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture(scope="session")
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A private Mosquitto (MQTT v5) on a free port, shared by the session. Do not stop it.

    Without the mosquitto binary, the broker already running on 127.0.0.1:1883 stands in (the
    embedded amqtt broker cannot: it speaks MQTT 3.1.1 only).
    """
    if mosquitto_binary() is None and port_open("127.0.0.1", 1883):
        yield Broker("127.0.0.1", 1883, tmp_path_factory.mktemp("external-broker"))
        return
    with private_mosquitto(tmp_path_factory.mktemp("mosquitto")) as broker:
        yield broker


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    """A private Mosquitto for one test, free to be stopped and restarted."""
    with private_mosquitto(tmp_path / "mosquitto") as broker:
        yield broker


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A SQLAlchemy URL to a fresh schema in the running PostgreSQL, dropped afterwards."""
    with postgres_schema() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cropwatch.db'}"


@pytest.fixture(scope="session")
def retrain_base_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The retraining tests' base run (tests/retrain_helpers.make_base_run), trained once per session:
    it takes a minute, and the integration and e2e retraining tests only read it. Do not write into it."""
    from tests.retrain_helpers import make_base_run

    return make_base_run(tmp_path_factory.mktemp("retrain-base"))


@pytest.fixture(scope="session")
def team_data() -> Path:
    if not TEAM_DATA.is_dir():
        missing_service(f"the team data folder {TEAM_DATA}")
    return TEAM_DATA


@pytest.fixture(autouse=True)
def _no_cropwatch_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CROPWATCH_") and not name.startswith("CROPWATCH_TEST_"):
            monkeypatch.delenv(name)
