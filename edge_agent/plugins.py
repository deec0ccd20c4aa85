"""Plugin registries: inference backends, image sources and sensor readers, each found in one package.

A plugin is one module in its kind's package (``edge_agent/inference/``, ``edge_agent/sources/``,
``edge_agent/sensors/``): a pydantic settings model whose discriminator field (``type``; ``kind``
for sensor readers) is a one-value ``Literal``, the class that does the work, and one
``registry.register(Settings, factory)`` call. The registry imports every module of its package the
first time it is asked for a plugin (at config validation), so a plugin module must import optional
device or runtime libraries (OpenCV, pyserial, onnxruntime) inside the methods that use them.
Modules outside the project register the same way; the agent config names them in
``[plugins] modules`` (:func:`import_plugin_modules`).
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import threading
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

from pydantic import BaseModel
from pydantic_core import PydanticCustomError

logger = logging.getLogger(__name__)

SettingsT = TypeVar("SettingsT", bound=BaseModel)
PluginSettingsT = TypeVar("PluginSettingsT", bound=BaseModel)
ProductT = TypeVar("ProductT")
ArgsP = ParamSpec("ArgsP")


class UnknownPlugin(LookupError):
    """No plugin is registered under that type."""


@dataclass(frozen=True)
class Plugin(Generic[SettingsT, ArgsP, ProductT]):
    name: str
    settings: type[SettingsT]
    # Registered together with ``settings`` (checked by ``register``), so every call passes its own model.
    factory: Callable[Concatenate[Any, ArgsP], ProductT]


class PluginRegistry(Generic[SettingsT, ArgsP, ProductT]):
    """The plugins of one kind: ``type`` value -> settings model and factory.

    ``factory(settings, *args)`` builds the plugin; ``args`` are what every plugin of this kind gets
    (a source its context, a backend the trusted keys). ``default`` is the type of an entry that
    names none.
    """

    def __init__(
        self,
        what: str,
        package: str,
        base: type[SettingsT],
        key: str = "type",
        default: str | None = None,
        old_key: str | None = None,
    ) -> None:
        self.what = what
        self.package = package
        self.base = base
        self.key = key
        self.default = default
        self.old_key = old_key
        self._plugins: dict[str, Plugin[SettingsT, ArgsP, ProductT]] = {}
        self._discovered = False
        self._lock = threading.RLock()

    def register(
        self, settings: type[PluginSettingsT], factory: Callable[Concatenate[PluginSettingsT, ArgsP], ProductT]
    ) -> None:
        """Add a plugin; its settings model subclasses the kind's base and has ``key: Literal["name"]``."""
        if not issubclass(settings, self.base):
            raise TypeError(f"{settings.__qualname__} must subclass {self.base.__qualname__}")
        field = settings.model_fields.get(self.key)
        names = typing.get_args(field.annotation) if field is not None else ()
        if len(names) != 1 or not isinstance(names[0], str):
            raise TypeError(f"{settings.__qualname__}.{self.key} must be a Literal of one string")
        name = names[0]
        with self._lock:
            known = self._plugins.get(name)
            if known is not None and known.settings.__module__ != settings.__module__:
                raise ValueError(
                    f"{self.what} {self.key} {name!r} is registered twice: "
                    f"{known.settings.__module__} and {settings.__module__}"
                )
            self._plugins[name] = Plugin(name, settings, factory)

    def _all(self) -> dict[str, Plugin[SettingsT, ArgsP, ProductT]]:
        with self._lock:
            if not self._discovered:
                package = importlib.import_module(self.package)
                for info in pkgutil.iter_modules(package.__path__):
                    importlib.import_module(f"{self.package}.{info.name}")
                self._discovered = True
            return self._plugins

    def types(self) -> list[str]:
        return sorted(self._all())

    def get(self, name: str) -> Plugin[SettingsT, ArgsP, ProductT]:
        plugin = self._all().get(name)
        if plugin is None:
            raise UnknownPlugin(f"unknown {self.what} {self.key} {name!r}; known: {', '.join(self.types())}")
        return plugin

    def validate(self, value: object) -> object:
        """Pydantic before-validator: a config table becomes the settings model its ``key`` names."""
        if isinstance(value, self.base) or not isinstance(value, Mapping):
            return value  # already settings, or not a table: pydantic reports the type
        return self.parse(value)

    def parse(self, value: Mapping[str, object]) -> SettingsT:
        """The settings model ``value[key]`` names, validated; an unknown name lists the known ones."""
        if self.old_key is not None and self.old_key in value and self.key not in value:
            # Configs written before readers were plugins name the reader by ``kind``; they keep working.
            value = {self.key: value[self.old_key], **{k: v for k, v in value.items() if k != self.old_key}}
        name = value.get(self.key, self.default)
        if not isinstance(name, str) or name not in self._all():
            given = f"{self.key} {name!r} is not known" if name is not None else f"has no {self.key}"
            raise PydanticCustomError(
                "unknown_plugin",
                "{what} {given}; known: {known} (a plugin from outside the project is named in [plugins] modules)",
                {"what": self.what, "given": given, "known": ", ".join(self.types())},
            )
        return self.get(name).settings.model_validate(dict(value))

    def create(self, settings: SettingsT, *args: ArgsP.args, **kwargs: ArgsP.kwargs) -> ProductT:
        plugin = self.get(getattr(settings, self.key))
        if not isinstance(settings, plugin.settings):
            raise TypeError(f"{self.what} {plugin.name!r} needs {plugin.settings.__qualname__} settings")
        return plugin.factory(settings, *args, **kwargs)


def import_plugin_modules(names: list[str]) -> None:
    """Import modules outside the project that register plugins (``[plugins] modules``)."""
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise ValueError(f"plugins.modules: cannot import {name!r}: {exc}") from exc
        logger.debug("plugin module %s imported", name)


def resolve_paths(settings: SettingsT, base: Path) -> SettingsT:
    """Relative ``Path`` fields of plugin settings (and of settings nested in them, such as a sensor
    source's reader), taken relative to the config file's folder."""
    update: dict[str, object] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, Path) and not value.is_absolute():
            update[name] = base / value
        elif isinstance(value, BaseModel):
            nested = resolve_paths(value, base)
            if nested is not value:
                update[name] = nested
    return settings.model_copy(update=update) if update else settings
