"""The one place the monitor app calls rollout (:mod:`fleet.rollout`, shared with the CLI).

Publish and Roll back on the Models page run the same functions as ``cropwatch models
publish|rollback``. The app reads only the database; this is its single write to the fleet: the
rollout code sends one retained desired-model message with the ops credentials from ``[app]``
(``rollout_broker``, ``rollout_base_url``), exactly as the CLI does, and records the desired
version per device in the monitor's own database (``device_models.desired_*``, by the user).
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import TYPE_CHECKING

from fleet import rollout
from fleet.registry import Registry
from shared.messages import DesiredModel

from ..config import MonitorConfig
from .auth import User

if TYPE_CHECKING:
    from fleet.mqtt_publish import Publisher

logger = logging.getLogger(__name__)


def publisher_module() -> ModuleType | None:
    """:mod:`fleet.mqtt_publish`, or None where paho-mqtt is not installed (the app alone needs none)."""
    try:
        return importlib.import_module("fleet.mqtt_publish")
    except ImportError:
        return None


def missing_settings(config: MonitorConfig) -> list[str]:
    """What ``[app]`` lacks for rollout from the page (empty when it can roll out)."""
    app = config.app
    return [name for name in ("registry", "rollout_broker", "rollout_base_url") if not getattr(app, name)]


def available(config: MonitorConfig | None = None) -> bool:
    return publisher_module() is not None and (config is None or not missing_settings(config))


def _prepare(user: User, config: MonitorConfig, farm_id: str) -> tuple[Registry, Publisher, str]:
    """The registry, a publisher with the ops credentials and the download base URL, once the user
    may roll out on the farm."""
    user.require("models", farm_id)
    module = publisher_module()
    if module is None:
        raise RuntimeError("rollout is not available in this installation (paho-mqtt for fleet.mqtt_publish)")
    missing = missing_settings(config)
    if missing:
        raise RuntimeError(f"set {', '.join(f'app.{m}' for m in missing)} in monitor.toml to roll out from here")
    app = config.app
    assert app.registry and app.rollout_broker and app.rollout_base_url  # missing_settings said so
    password = app.rollout_broker_password.get_secret_value() if app.rollout_broker_password else None
    publisher: Publisher = module.broker_publisher(app.rollout_broker, app.rollout_ca_file, password)
    return Registry(app.registry), publisher, app.rollout_base_url


def publish(user: User, config: MonitorConfig, farm_id: str, name: str, version: str) -> DesiredModel:
    registry, publisher, base_url = _prepare(user, config, farm_id)
    logger.info("%s publishes %s %s to farm %s", user.username, name, version, farm_id)
    return rollout.publish(
        registry, name, version, farm_id, base_url, publisher,
        db_url=config.database.url, by=user.username,
    )  # fmt: skip


def rollback(user: User, config: MonitorConfig, farm_id: str, name: str) -> DesiredModel:
    registry, publisher, base_url = _prepare(user, config, farm_id)
    logger.info("%s rolls back %s on farm %s", user.username, name, farm_id)
    return rollout.rollback(
        registry, name, farm_id, publisher, base_url,
        db_url=config.database.url, by=user.username,
    )  # fmt: skip
