"""Config loading for every daemon: TOML file, then ``CROPWATCH_*`` environment overrides, then
secrets read from files, all validated by the daemon's pydantic model.

Environment overrides use ``__`` between levels: ``CROPWATCH_MQTT__HOST=broker.lan`` sets
``[mqtt] host``. Values are parsed as JSON when they parse (numbers, booleans, lists), else taken
as strings. A secret field (``SecretStr``) ``password`` may instead be given as ``password_file``,
a path whose content (trailing newline stripped) becomes the secret; that is how systemd
credentials and Docker/Kubernetes secrets arrive. Secrets print as ``**********``.
"""

from __future__ import annotations

import json
import os
import sys
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, SecretStr, ValidationError

from .errors import ConfigError

ENV_PREFIX = "CROPWATCH_"
REDACTED = "**********"
M = TypeVar("M", bound=BaseModel)


def _unwrap(annotation: Any) -> list[Any]:
    """The concrete types inside Optional/Union/Annotated."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        out: list[Any] = []
        for arg in typing.get_args(annotation):
            out.extend(_unwrap(arg))
        return out
    return [annotation]


def _submodel(model: type[BaseModel], key: str) -> type[BaseModel] | None:
    field = model.model_fields.get(key)
    if field is None:
        return None
    for t in _unwrap(field.annotation):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def _is_secret(model: type[BaseModel], key: str) -> bool:
    field = model.model_fields.get(key)
    return field is not None and any(t is SecretStr for t in _unwrap(field.annotation))


def _set_path(doc: dict[str, Any], path: list[str], value: Any, origin: str) -> None:
    node = doc
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError("bad_override", f"{origin}: {part} is not a table, cannot set {'.'.join(path)}")
        node = child
    node[path[-1]] = value


def _env_overrides(environ: Mapping[str, str], prefix: str) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for name, raw in sorted(environ.items()):
        # CONFIG names the file; CLOCK_OFFSET_FILE is the chaos soak's clock hook (shared/ids.py).
        if not name.startswith(prefix) or name in (f"{prefix}CONFIG", f"{prefix}CLOCK_OFFSET_FILE"):
            continue
        path = [p.lower() for p in name[len(prefix) :].split("__")]
        if not all(path):
            raise ConfigError("bad_override", f"environment variable {name} has an empty level")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        _set_path(doc, path, value, name)
    return doc


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _resolve_secret_files(model: type[BaseModel], doc: dict[str, Any], where: str, base_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if key.endswith("_file") and _is_secret(model, key[: -len("_file")]) and key not in model.model_fields:
            secret_key = key[: -len("_file")]
            path = Path(str(value))
            if not path.is_absolute():
                path = base_dir / path
            try:
                out[secret_key] = path.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ConfigError(
                    "secret_file", f"{where}{key}: cannot read secret file {path}: {exc.strerror}"
                ) from exc
            continue
        sub = _submodel(model, key)
        if sub is not None and isinstance(value, dict):
            out[key] = _resolve_secret_files(sub, value, f"{where}{key}.", base_dir)
        elif sub is not None and isinstance(value, list):
            out[key] = [
                _resolve_secret_files(sub, v, f"{where}{key}[{i}].", base_dir) if isinstance(v, dict) else v
                for i, v in enumerate(value)
            ]
        else:
            out[key] = value
    return out


def load_config(
    model: type[M],
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    prefix: str = ENV_PREFIX,
) -> M:
    """Load and validate a config; raises :class:`ConfigError` naming the bad key."""
    env = os.environ if environ is None else environ
    doc: dict[str, Any] = {}
    base_dir = Path.cwd()
    if path is not None:
        file = Path(path)
        base_dir = file.resolve().parent
        try:
            doc = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError("missing_file", f"config file {file} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("bad_toml", f"config file {file} is not valid TOML: {exc}") from exc
    doc = _merge(doc, _env_overrides(env, prefix))
    doc = _resolve_secret_files(model, doc, "", base_dir)
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False)[:10]:
            loc = ".".join(str(p) for p in err["loc"]) or "(root)"
            problems.append(f"  {loc}: {err['msg']}")
        source = f"config file {path}" if path else "configuration"
        raise ConfigError("invalid", f"{source} is not valid:\n" + "\n".join(problems)) from exc


def redacted(config: BaseModel) -> dict[str, Any]:
    """The config as plain data with every secret replaced, for logs and ``--check-config``."""

    def walk(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return REDACTED if value.get_secret_value() else ""
        if isinstance(value, BaseModel):
            return {k: walk(getattr(value, k)) for k in type(value).model_fields}
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    plain: dict[str, Any] = walk(config)
    return plain


def redacted_json(config: BaseModel) -> str:
    return json.dumps(redacted(config), indent=2, default=str, sort_keys=False)


def command_config(
    model: type[M], path: str | os.PathLike[str] | None, prog: str, check_config: bool = False
) -> M | int:
    """A command's config, or its exit code: 2 after saying on stderr what is wrong, 0 after
    ``--check-config`` printed it with secrets redacted."""
    try:
        cfg = load_config(model, path)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    if check_config:
        print(redacted_json(cfg))
        return 0
    return cfg
