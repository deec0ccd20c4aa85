"""Apprise, the one delivery library: a channel is an Apprise URL or a ``secret:NAME`` reference to one.

A reference resolves on the notify host (``[notify] channels_dir/NAME`` file, else the environment
variable ``CROPWATCH_CHANNEL_NAME``), so a bot token need never be in the database. Whatever a
channel is, logs and errors show only :func:`~farm_monitor.db.notifications.redact_channel`.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import apprise

from ..config import NotifySettings
from ..db.notifications import SECRET_PREFIX, redact_channel

logger = logging.getLogger(__name__)


class ChannelError(Exception):
    """A channel that can never work as written (no retry helps); the message is safe to show."""


@dataclass(frozen=True)
class SendResult:
    ok: bool
    error: str | None = None


def configure(settings: NotifySettings) -> None:
    """Process-wide Apprise settings: a self-hosted Telegram Bot API server.

    Apprise's Telegram plugin has no URL option for its API host; the documented way to use a
    local Bot API server is the plugin class's ``notify_url``, set here once at start.
    """
    # Apprise's own log lines can quote URLs (tokens, addresses): they reach our log only through
    # send(), scrubbed, never directly.
    logging.getLogger("apprise").propagate = False
    if settings.telegram_api_url:
        from apprise.plugins.telegram import NotifyTelegram

        NotifyTelegram.notify_url = settings.telegram_api_url.rstrip("/") + "/bot"


def resolve(channel: str, settings: NotifySettings) -> str:
    """The Apprise URL behind a channel; :class:`ChannelError` when a reference points at nothing."""
    if not channel.startswith(SECRET_PREFIX):
        return channel
    name = channel.removeprefix(SECRET_PREFIX)
    if settings.channels_dir:
        path = Path(settings.channels_dir) / name
        if path.is_file():
            return path.read_text(encoding="utf-8").strip()
    env = "CROPWATCH_CHANNEL_" + re.sub(r"[^A-Z0-9]", "_", name.upper())
    value = os.environ.get(env, "").strip()
    if value:
        return value
    raise ChannelError(
        f"{channel}: no file {name} in notify.channels_dir ({settings.channels_dir or 'unset'}) and no {env}"
    )


def _scrub(text: str, url: str) -> str:
    """Apprise's log lines may quote the URL or parts of it (tokens, hosts): cut every long part of it."""
    for part in sorted({url, *re.split(r"[/:@?&=]", url)}, key=len, reverse=True):
        if len(part) >= 6:
            text = text.replace(part, "***")
    return text


def send(channel: str, settings: NotifySettings, title: str, body: str, attachment: Path | None) -> SendResult:
    """One message to one channel. Never raises for a delivery failure: it returns what went wrong."""
    url = resolve(channel, settings)
    app = apprise.Apprise()
    if not app.add(url):
        raise ChannelError(f"{redact_channel(channel)} is not an Apprise URL Apprise understands")
    attach = apprise.AppriseAttachment(str(attachment)) if attachment is not None else None
    with apprise.LogCapture(level=logging.WARNING, fmt="%(message)s") as captured:
        try:
            ok = bool(app.notify(body=body, title=title, attach=attach, body_format=apprise.NotifyFormat.TEXT))
        except Exception as exc:  # a plugin bug must not take the service down
            logger.exception("apprise failed on %s", redact_channel(channel))
            ok, extra = False, f"{type(exc).__name__}"
        else:
            extra = ""
        log_text = captured.getvalue()
    if ok:
        return SendResult(True)
    lines = [ln.strip() for ln in log_text.splitlines() if ln.strip()]
    error = _scrub(" | ".join(lines[-3:]) or extra or "the service refused the message", url)
    return SendResult(False, error[:500])
