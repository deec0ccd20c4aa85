"""Identifiers: the id pattern of the design and time-ordered unique message ids."""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from datetime import UTC, datetime

ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
ID_RE = re.compile(ID_PATTERN)

# Crockford base32, as ULID uses: sorts lexicographically in time order.
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
MSG_ID_PATTERN = r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$"
MSG_ID_RE = re.compile(MSG_ID_PATTERN)

_lock = threading.Lock()
_last_ms = -1
# Test hook for the chaos soak (bench/chaos.py): a file holding seconds to add to the wall clock,
# so a harness can jump a device's clock hours forward and back without root or faketime. Read
# at import, so a process without the variable pays nothing; never set it in production.
CLOCK_OFFSET_ENV = "CROPWATCH_CLOCK_OFFSET_FILE"
_offset_file = os.environ.get(CLOCK_OFFSET_ENV) or None
_offset_cache: tuple[float, float] = (-1.0, 0.0)  # (file mtime, offset)
_last_rand = 0


def is_valid_id(value: str) -> bool:
    return isinstance(value, str) and ID_RE.fullmatch(value) is not None


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, rem = divmod(value, 32)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars))


def clock_offset_s() -> float:
    """Seconds the test hook adds to the wall clock (0 without ``CROPWATCH_CLOCK_OFFSET_FILE``)."""
    global _offset_cache
    if _offset_file is None:
        return 0.0
    try:
        mtime = os.stat(_offset_file).st_mtime
        if mtime != _offset_cache[0]:
            with open(_offset_file, encoding="utf-8") as fh:
                _offset_cache = (mtime, float(fh.read().strip() or 0.0))
    except (OSError, ValueError):
        return _offset_cache[1]
    return _offset_cache[1]


def wall_time() -> float:
    """``time.time()`` as the device sees it: with the test hook's offset when one is set."""
    return time.time() + clock_offset_s()


def new_msg_id(now_ms: int | None = None) -> str:
    """A ULID: 48-bit millisecond timestamp then 80 random bits.

    Within one millisecond the random part is incremented instead of redrawn, so ids made by one
    process are strictly increasing; an outbox relies on that to replay in order.
    """
    global _last_ms, _last_rand
    if now_ms is not None:
        # An explicit time (backfill, tests) stands outside the process's monotonic sequence.
        return _encode(now_ms, 10) + _encode(int.from_bytes(os.urandom(10), "big") >> 1, 16)
    ms = int(wall_time() * 1000)
    with _lock:
        if ms <= _last_ms:
            ms = _last_ms
            rand = _last_rand + 1
            if rand >= 1 << 80:  # 2^80 ids in one ms cannot happen in practice; move to next ms
                ms += 1
                rand = int.from_bytes(os.urandom(10), "big") >> 1
        else:
            # Top bit cleared leaves room to increment without overflowing into the next ms.
            rand = int.from_bytes(os.urandom(10), "big") >> 1
        _last_ms, _last_rand = ms, rand
    return _encode(ms, 10) + _encode(rand, 16)


def derived_msg_id(time_ms: int, key: bytes) -> str:
    """A ULID whose time part is ``time_ms`` and whose random part is a hash of ``key``.

    The same (time, key) always gives the same id, so a message that reaches a bridge twice (a
    LoRaWAN uplink replayed by its network server) carries one msg_id and ingest stores it once.
    """
    if not 0 <= time_ms < 1 << 48:
        raise ValueError(f"time_ms {time_ms} is outside the 48-bit range of a msg_id")
    digest = int.from_bytes(hashlib.blake2b(key, digest_size=10).digest(), "big") >> 1
    return _encode(time_ms, 10) + _encode(digest, 16)


def msg_id_time(msg_id: str) -> datetime:
    """The creation time encoded in a msg_id."""
    if not MSG_ID_RE.fullmatch(msg_id):
        raise ValueError(f"not a msg_id: {msg_id!r}")
    ms = 0
    for ch in msg_id[:10]:
        ms = ms * 32 + _ALPHABET.index(ch)
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def utcnow() -> datetime:
    if _offset_file is None:
        return datetime.now(UTC)
    return datetime.fromtimestamp(wall_time(), tz=UTC)
