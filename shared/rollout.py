"""The rollout policy both ends evaluate: which devices of a farm take a published model.

The cloud prints who should get a version; the agent decides whether it takes it. Both must give
the same answer, so the rule lives here: a device is in a ``percent`` rollout when its bucket, a
stable hash of (model name, device id) mapped onto [0, 100), is below the percent. The bucket never
changes for a device, so raising 10 to 50 to 100 only ever adds devices, and a different model name
reshuffles the order so the same devices are not always first.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from .messages import RolloutPolicy


def bucket(model_name: str, device_id: str) -> float:
    """The device's position in [0, 100) for this model's rollouts."""
    digest = hashlib.sha256(f"{model_name}\x00{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100.0


def selects(policy: RolloutPolicy, model_name: str, device_id: str, groups: Iterable[str] = ()) -> bool:
    """True when every condition of the policy holds for this device."""
    if policy.devices is not None and device_id not in policy.devices:
        return False
    if policy.group is not None and policy.group not in set(groups):
        return False
    return bucket(model_name, device_id) < policy.percent


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Order versions like people do: ``1.10.0`` after ``1.9.2``; numbers before words in a part."""
    parts = re.split(r"[.+_-]", version)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


def is_newer(candidate: str, current: str) -> bool:
    return version_key(candidate) > version_key(current)
