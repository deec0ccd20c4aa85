"""Commands on ``cropwatch/v1/{farm}/{device}/cmd/{command}``.

Every payload is validated by :func:`shared.messages.parse_command`. A malformed or unknown
command, one addressed to another device, or one past its ``expires_at`` gets an error event and
is otherwise ignored; nothing a broker delivers can stop the agent. Retained commands are ignored
(the subscription also asks the broker not to send them), so a stale command never replays.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from shared.errors import ContractError
from shared.ids import utcnow
from shared.messages import CaptureNow, Ping, ReloadConfig, SetLogLevel, parse_command
from shared.topics import parse_topic

logger = logging.getLogger(__name__)

AnyCommand = CaptureNow | ReloadConfig | SetLogLevel | Ping


@dataclass
class CommandActions:
    capture_now: Callable[[str | None], list[str]]
    reload_config: Callable[[], None]
    set_log_level: Callable[[str], None]
    event: Callable[..., None]  # (level, code, message, details)
    count: Callable[[str], None]


class CommandHandler:
    def __init__(self, farm_id: str, device_id: str, actions: CommandActions) -> None:
        self.farm_id = farm_id
        self.device_id = device_id
        self.actions = actions

    def handle(self, topic: str, payload: bytes, retained: bool) -> None:
        if retained:
            logger.info("ignored a retained command on %s (stale commands never replay)", topic)
            self.actions.count("command_retained")
            return
        try:
            parsed = parse_topic(topic)
            # parse_command validates against exactly these classes (shared.messages.Command).
            cmd = cast(AnyCommand, parse_command(payload, parsed.command))
        except ContractError as exc:
            self._reject(topic, exc.reason, str(exc))
            return
        if cmd.device_id != self.device_id or cmd.farm_id != self.farm_id:
            self._reject(topic, "wrong_device", f"command {cmd.msg_id} is addressed to {cmd.farm_id}/{cmd.device_id}")
            return
        if cmd.expires_at is not None and cmd.expires_at <= utcnow():
            self._reject(topic, "expired", f"command {cmd.msg_id} expired at {cmd.expires_at.isoformat()}")
            return
        self.actions.count(f"command_{cmd.command}")
        self._dispatch(cmd)

    def _dispatch(self, cmd: AnyCommand) -> None:
        details = {"command": cmd.command, "command_msg_id": cmd.msg_id}
        if isinstance(cmd, CaptureNow):
            started = self.actions.capture_now(cmd.source)
            if not started:
                self.actions.event(
                    "warning", "command_failed", f"capture_now: no source {cmd.source or ''} can capture", details
                )
                return
            self.actions.event("info", "command_done", f"capture_now started on {', '.join(started)}", details)
        elif isinstance(cmd, ReloadConfig):
            self.actions.reload_config()
            self.actions.event("info", "command_done", "config reload requested", details)
        elif isinstance(cmd, SetLogLevel):
            self.actions.set_log_level(cmd.level)
            self.actions.event("info", "command_done", f"log level set to {cmd.level}", {**details, "level": cmd.level})
        elif isinstance(cmd, Ping):
            self.actions.event("info", "pong", "pong", details)

    def _reject(self, topic: str, reason: str, text: str) -> None:
        logger.warning("rejected command on %s: %s", topic, text)
        self.actions.count("command_rejected")
        self.actions.event(
            "error", "bad_command", f"command rejected: {text}"[:2000], {"topic": topic[:256], "reason": reason}
        )
