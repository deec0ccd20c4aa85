"""Annotated field types reused by every schema in the contract."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, ConfigDict, Field, StringConstraints

from .ids import ID_PATTERN, MSG_ID_PATTERN

Id = Annotated[
    str,
    StringConstraints(pattern=ID_PATTERN),
    Field(description="Lower-case id: `[a-z0-9][a-z0-9_-]{0,63}`; no slashes or wildcards."),
]
MsgId = Annotated[
    str,
    StringConstraints(pattern=MSG_ID_PATTERN),
    Field(description="ULID: unique and time-ordered (26 Crockford base32 characters)."),
]
Version = Annotated[
    str,
    StringConstraints(pattern=r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$"),
    Field(description="Model or agent version, e.g. `1.4.0` or `2026.11.28-1`."),
]
Sha256Hex = Annotated[
    str,
    StringConstraints(pattern=r"^[0-9a-f]{64}$"),
    Field(description="Lower-case hex SHA-256."),
]
Label = Annotated[str, StringConstraints(min_length=1, max_length=128)]
ShortText = Annotated[str, StringConstraints(max_length=256)]


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


UtcDatetime = Annotated[
    AwareDatetime,
    AfterValidator(_to_utc),
    Field(description="ISO 8601 time with a zone; stored and sent as UTC."),
]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]

STRICT_MODEL = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True, populate_by_name=False)
