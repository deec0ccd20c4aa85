"""Structured logs: one JSON object per line (for journald and log shippers), or plain text."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "thread": record.threadName,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


class _AgentHandler(logging.StreamHandler[TextIO]):
    """The handler setup_logging installs (and replaces when called again)."""


def setup_logging(level: str = "info", fmt: str = "json") -> None:
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, _AgentHandler):
            root.removeHandler(old)
    handler = _AgentHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root.addHandler(handler)
    set_level(level)


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())
    # paho and onnxruntime chatter at debug is noise next to the agent's own lines
    logging.getLogger("paho").setLevel(max(logging.INFO, logging.getLogger().level))
