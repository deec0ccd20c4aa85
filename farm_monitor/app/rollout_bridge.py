"""The one place the monitor calls the rollout code (``cloud_trainer.rollout``, shared with the CLI).

Promote and rollback on the Models page go through the same functions as ``cropwatch models
publish|rollback``. Until that module exists the page says rollout is not available.
"""

from __future__ import annotations

import importlib
import inspect
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


def available() -> bool:
    return rollout_module() is not None


def _call(func: Any, **kwargs: Any) -> Any:
    # The rollout signature is still being written on another branch: pass only what it accepts.
    params = inspect.signature(func).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    return func(**kwargs)


def publish(user: User, config: Any, farm_id: str, name: str, version: str) -> Any:
    user.require("models", farm_id)
    module = rollout_module()
    if module is None:
        raise RuntimeError("rollout is not available in this installation yet (cloud_trainer.rollout missing)")
    logger.info("%s publishes %s %s to farm %s", user.username, name, version, farm_id)
    return _call(module.publish, config=config, farm_id=farm_id, name=name, version=version, by=user.username)


def rollback(user: User, config: Any, farm_id: str, name: str) -> Any:
    user.require("models", farm_id)
    module = rollout_module()
    if module is None:
        raise RuntimeError("rollout is not available in this installation yet (cloud_trainer.rollout missing)")
    logger.info("%s rolls back %s on farm %s", user.username, name, farm_id)
    return _call(module.rollback, config=config, farm_id=farm_id, name=name, by=user.username)
