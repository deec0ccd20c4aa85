"""The one place the monitor calls the rollout code (``cloud_trainer.rollout``, shared with the CLI).

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
from typing import Any

from .auth import User

logger = logging.getLogger(__name__)


def rollout_module() -> ModuleType | None:
    try:
        module = importlib.import_module("cloud_trainer.rollout")
    except ImportError:
        return None
    return module if all(hasattr(module, f) for f in ("publish", "rollback")) else None


def missing_settings(config: Any) -> list[str]:
    """What ``[app]`` lacks for rollout from the page (empty when it can roll out)."""
    app = config.app
    return [name for name in ("registry", "rollout_broker", "rollout_base_url") if not getattr(app, name)]


def available(config: Any = None) -> bool:
    return rollout_module() is not None and (config is None or not missing_settings(config))


def _publisher(config: Any):  # type: ignore[no-untyped-def]
    from cloud_trainer.mqtt_publish import publish_retained

    app = config.app
    password = app.rollout_broker_password.get_secret_value() if app.rollout_broker_password else None

    def send(topic: str, payload: bytes) -> None:
        publish_retained(app.rollout_broker, topic, payload, ca_file=app.rollout_ca_file, password=password)

    return send


def _prepare(user: User, config: Any, farm_id: str) -> tuple[ModuleType, Any]:
    user.require("models", farm_id)
    module = rollout_module()
    if module is None:
        raise RuntimeError("rollout is not available in this installation (cloud_trainer.rollout is missing)")
    missing = missing_settings(config)
    if missing:
        raise RuntimeError(f"set {', '.join(f'app.{m}' for m in missing)} in monitor.toml to roll out from here")
    from cloud_trainer.registry import Registry

    return module, Registry(config.app.registry)


def publish(user: User, config: Any, farm_id: str, name: str, version: str) -> Any:
    module, registry = _prepare(user, config, farm_id)
    logger.info("%s publishes %s %s to farm %s", user.username, name, version, farm_id)
    return module.publish(
        registry, name, version, farm_id, config.app.rollout_base_url, _publisher(config),
        db_url=config.database.url, by=user.username,
    )  # fmt: skip


def rollback(user: User, config: Any, farm_id: str, name: str) -> Any:
    module, registry = _prepare(user, config, farm_id)
    logger.info("%s rolls back %s on farm %s", user.username, name, farm_id)
    return module.rollback(
        registry, name, farm_id, _publisher(config), config.app.rollout_base_url,
        db_url=config.database.url, by=user.username,
    )  # fmt: skip
