"""The documented errors of the contract.

Every check in ``shared`` raises a subclass of :class:`ContractError` and nothing else, so a
daemon can catch one type, record ``reason`` (a short stable code for counters and dead letters)
and carry on.
"""

from __future__ import annotations


class ContractError(ValueError):
    """Input that breaks the contract. ``reason`` is a stable code; the message says what to do."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.args[0]} [{self.reason}]"


class MessageError(ContractError):
    """A payload that is not a valid Cropwatch message."""


class TopicError(ContractError):
    """A topic outside the Cropwatch topic tree."""


class ManifestError(ContractError):
    """A model manifest or artifact that failed verification."""


class ImageDecodeError(ContractError):
    """Bytes that cannot be turned into a model input image."""


class ConfigError(ContractError):
    """A configuration file or environment override that is not valid."""
