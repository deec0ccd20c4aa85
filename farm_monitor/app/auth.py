"""Monitor users: a JSON users file with argon2 password hashes, roles, farm scopes, permissions.

No Streamlit here: ``cropwatch users`` and the app's server-side checks share this module.
Roles are cumulative: a farmer reads, an agronomist also labels, acknowledges and rolls out
models, an admin also manages users and the farm layout. Every user is scoped to a list of farms
(``*`` = all); a farmer must name theirs.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from shared.fsutil import atomic_write_text
from shared.ids import ID_RE

logger = logging.getLogger(__name__)

ROLES = ("farmer", "agronomist", "admin")
PERMISSIONS: dict[str, set[str]] = {
    "view": {"farmer", "agronomist", "admin"},
    "acknowledge": {"agronomist", "admin"},
    "label": {"agronomist", "admin"},
    "models": {"agronomist", "admin"},
    "layout": {"admin"},
    "users": {"admin"},
}
USERNAME_RE = re.compile(r"[a-z0-9][a-z0-9_.@-]{0,63}")
_hasher = PasswordHasher()
# Verified against when the user does not exist, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash("not a password")


class AuthError(Exception):
    """A users-file problem or a refused action; the message says what to do."""


class PermissionDenied(AuthError):
    pass


@dataclass(frozen=True)
class User:
    username: str
    role: str
    farms: tuple[str, ...]

    def can(self, permission: str) -> bool:
        return self.role in PERMISSIONS.get(permission, set())

    def sees_farm(self, farm_id: str) -> bool:
        return "*" in self.farms or farm_id in self.farms

    def visible_farms(self, farms: list[str]) -> list[str]:
        return [f for f in farms if self.sees_farm(f)]

    def require(self, permission: str, farm_id: str | None = None) -> None:
        """Raise PermissionDenied unless this user may do ``permission`` (on ``farm_id``)."""
        if not self.can(permission):
            raise PermissionDenied(f"{self.username} ({self.role}) may not {permission}; ask an admin")
        if farm_id is not None and not self.sees_farm(farm_id):
            raise PermissionDenied(f"{self.username} has no access to farm {farm_id}")


class UsersFile:
    """``{"users": {name: {"hash", "role", "farms", "created_at"}}}``, written atomically, mode 0600."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def _load(self) -> dict[str, dict[str, Any]]:
        if not self.path.exists():
            return {}
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            users: dict[str, dict[str, Any]] = doc["users"]
            if not isinstance(users, dict):
                raise TypeError("users is not an object")
        except (ValueError, KeyError, TypeError) as exc:
            raise AuthError(
                f"{self.path} is not a Cropwatch users file ({exc}); recreate it with 'cropwatch users add'"
            ) from None
        return users

    def _save(self, users: dict[str, dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps({"users": users}, indent=2, sort_keys=True) + "\n", mode=0o600)

    def list(self) -> list[User]:
        return [_user(name, rec) for name, rec in sorted(self._load().items())]

    def get(self, username: str) -> User | None:
        rec = self._load().get(username)
        return _user(username, rec) if rec else None

    # builtins.list: inside this class, ``list`` is the method above.
    def add(self, username: str, password: str, role: str, farms: builtins.list[str], replace: bool = False) -> User:
        if not USERNAME_RE.fullmatch(username):
            raise AuthError(f"user name {username!r} must match {USERNAME_RE.pattern}")
        if role not in ROLES:
            raise AuthError(f"role {role!r} is not one of {', '.join(ROLES)}")
        farms = farms or (["*"] if role != "farmer" else [])
        if not farms:
            raise AuthError("a farmer needs at least one farm (--farm FARM_ID)")
        for farm in farms:
            if farm != "*" and not ID_RE.fullmatch(farm):
                raise AuthError(f"farm id {farm!r} must match [a-z0-9][a-z0-9_-]{{0,63}} (or * for all farms)")
        if len(password) < 8:
            raise AuthError("the password must have at least 8 characters")
        users = self._load()
        if username in users and not replace:
            raise AuthError(f"user {username} exists; use --replace to change the password or role")
        users[username] = {
            "hash": _hasher.hash(password),
            "role": role,
            "farms": farms,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        self._save(users)
        return _user(username, users[username])

    def remove(self, username: str) -> bool:
        users = self._load()
        if users.pop(username, None) is None:
            return False
        self._save(users)
        return True

    def authenticate(self, username: str, password: str) -> User | None:
        """The user when the password matches, else None (same cost either way)."""
        rec = self._load().get(username.strip().lower())
        try:
            _hasher.verify(rec["hash"] if rec else _DUMMY_HASH, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        return _user(username.strip().lower(), rec) if rec else None


class LoginThrottle:
    """After ``max_failures`` wrong passwords for a name, refuse it for ``lock_s`` (per server process).

    Kept per user name, not per browser session, because a new session costs an attacker nothing.
    """

    def __init__(self, max_failures: int = 5, lock_s: float = 60.0) -> None:
        self.max_failures = max_failures
        self.lock_s = lock_s
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def wait_s(self, username: str, now: float) -> float:
        """Seconds until ``username`` may try again (0: now)."""
        with self._lock:
            recent = [t for t in self._failures.get(username, []) if now - t < self.lock_s]
            self._failures[username] = recent
            if len(recent) < self.max_failures:
                return 0.0
            return self.lock_s - (now - recent[-self.max_failures])

    def failed(self, username: str, now: float) -> None:
        with self._lock:
            self._failures.setdefault(username, []).append(now)

    def succeeded(self, username: str) -> None:
        with self._lock:
            self._failures.pop(username, None)


def _user(name: str, rec: dict[str, Any]) -> User:
    role = rec.get("role")
    if role not in ROLES:
        raise AuthError(f"user {name} has unknown role {role!r}; fix it with 'cropwatch users add --replace'")
    return User(name, role, tuple(rec.get("farms") or ()))
