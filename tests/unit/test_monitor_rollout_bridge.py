"""The Models page's promote/rollback go through cloud_trainer.rollout when it exists."""

from __future__ import annotations

import sys
import types

import pytest

from farm_monitor.app import rollout_bridge
from farm_monitor.app.auth import PermissionDenied, User

AGRO = User("ann", "agronomist", ("farm-a",))
FARMER = User("fred", "farmer", ("farm-a",))


def test_not_available_without_the_rollout_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cloud_trainer.rollout", None)  # import raises ImportError
    assert not rollout_bridge.available()
    with pytest.raises(RuntimeError, match="not available"):
        rollout_bridge.publish(AGRO, None, "farm-a", "leaf", "1.0.0")


def test_calls_the_cli_functions_with_what_they_accept(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    fake = types.ModuleType("cloud_trainer.rollout")
    fake.publish = lambda name, version, farm_id, by: calls.append(("publish", name, version, farm_id, by))
    fake.rollback = lambda name, farm_id, **kw: calls.append(("rollback", name, farm_id, kw["by"]))
    monkeypatch.setitem(sys.modules, "cloud_trainer.rollout", fake)
    assert rollout_bridge.available()
    rollout_bridge.publish(AGRO, object(), "farm-a", "leaf", "1.0.0")
    rollout_bridge.rollback(AGRO, object(), "farm-a", "leaf")
    assert calls[0] == ("publish", "leaf", "1.0.0", "farm-a", "ann")
    assert calls[1] == ("rollback", "leaf", "farm-a", "ann")
    with pytest.raises(PermissionDenied):
        rollout_bridge.publish(FARMER, None, "farm-a", "leaf", "1.0.0")
    with pytest.raises(PermissionDenied):
        rollout_bridge.rollback(AGRO, None, "farm-b", "leaf")
    assert len(calls) == 2
