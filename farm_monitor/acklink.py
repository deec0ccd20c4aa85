"""Signed, expiring acknowledge links: ``cropwatch notify`` signs them, the monitor checks them.

A token is ``base64url(JSON payload) "." base64url(HMAC-SHA256)`` over the payload with
``[notify] ack_secret``. The payload names the alert, the user it acknowledges as, the ledger row
it was sent in (which makes a token usable once: the row records its use) and the expiry. Standard
library only, so both the notify service and the monitor import it without a new dependency.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime


class AckLinkError(Exception):
    """A refused link; ``reason`` is one of malformed, bad_signature, expired."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class AckClaim:
    alert_id: int
    username: str
    delivery_id: int
    expires_at: datetime


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, body: str) -> str:
    # The domain string keeps a token from being valid for any other use of the same secret.
    return _b64(hmac.new(secret.encode(), b"cropwatch-ack-v1." + body.encode(), hashlib.sha256).digest())


def sign(secret: str, claim: AckClaim) -> str:
    payload = {"a": claim.alert_id, "u": claim.username, "d": claim.delivery_id, "e": int(claim.expires_at.timestamp())}
    body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
    return f"{body}.{_mac(secret, body)}"


def verify(secret: str, token: str, now: datetime) -> AckClaim:
    """The claim a token carries, or :class:`AckLinkError` for an altered, foreign or expired one."""
    body, sep, mac = token.strip().partition(".")
    if not sep or not body or not mac:
        raise AckLinkError("malformed", "this acknowledge link is incomplete; copy the whole link from the message")
    if not hmac.compare_digest(mac, _mac(secret, body)):
        raise AckLinkError("bad_signature", "this acknowledge link was altered or is not from this monitor")
    try:
        doc = json.loads(_unb64(body))
        claim = AckClaim(int(doc["a"]), str(doc["u"]), int(doc["d"]), datetime.fromtimestamp(int(doc["e"]), UTC))
    except (ValueError, KeyError, TypeError):
        raise AckLinkError("malformed", "this acknowledge link cannot be read") from None
    if now >= claim.expires_at:
        raise AckLinkError("expired", "this acknowledge link has expired; acknowledge on the Alerts page instead")
    return claim
