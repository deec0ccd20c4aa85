"""The Models page's publish/rollback go through fleet.rollout, and only for those allowed."""

from __future__ import annotations

import sys

import pytest

from farm_monitor.app import rollout_bridge
from farm_monitor.app.auth import PermissionDenied, User
from farm_monitor.config import MonitorConfig

AGRO = User("ann", "agronomist", ("farm-a",))
FARMER = User("fred", "farmer", ("farm-a",))


def test_not_available_without_the_publisher_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fleet.mqtt_publish", None)  # import raises ImportError (no paho)
    assert not rollout_bridge.available()
    with pytest.raises(RuntimeError, match="not available"):
        rollout_bridge.publish(AGRO, MonitorConfig(), "farm-a", "leaf", "1.0.0")


def test_names_the_settings_it_lacks() -> None:
    cfg = MonitorConfig()
    assert rollout_bridge.missing_settings(cfg) == ["registry", "rollout_broker", "rollout_base_url"]
    assert not rollout_bridge.available(cfg)
    with pytest.raises(RuntimeError, match=r"app\.registry, app\.rollout_broker, app\.rollout_base_url"):
        rollout_bridge.publish(AGRO, cfg, "farm-a", "leaf", "1.0.0")


def test_roles_and_farms_are_checked_before_anything_else() -> None:
    with pytest.raises(PermissionDenied):
        rollout_bridge.publish(FARMER, MonitorConfig(), "farm-a", "leaf", "1.0.0")
    with pytest.raises(PermissionDenied):
        rollout_bridge.rollback(AGRO, MonitorConfig(), "farm-b", "leaf")
