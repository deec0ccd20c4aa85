"""The rollout rule both ends share: stable buckets, growing percentages, groups, version order."""

from __future__ import annotations

import itertools

from shared.messages import RolloutPolicy
from shared.rollout import bucket, is_newer, selects

DEVICES = [f"gw-{i:03d}" for i in range(400)]


def chosen(percent: float, name: str = "leafnet") -> set[str]:
    return {d for d in DEVICES if selects(RolloutPolicy(percent=percent), name, d)}


def test_raising_the_percent_only_adds_devices() -> None:
    steps = [chosen(p) for p in (0, 10, 34, 50, 100)]
    assert steps[0] == set() and steps[-1] == set(DEVICES)
    for smaller, larger in itertools.pairwise(steps):
        assert smaller <= larger
    # Roughly the asked share (400 devices: a hash, not an exact quota).
    assert 20 <= len(steps[1]) <= 60 and 160 <= len(steps[3]) <= 240


def test_buckets_are_stable_and_differ_per_model() -> None:
    assert bucket("leafnet", "gw-001") == bucket("leafnet", "gw-001")
    assert chosen(10, "leafnet") != chosen(10, "othernet")


def test_devices_and_group_conditions() -> None:
    policy = RolloutPolicy(devices=["gw-001", "gw-002"], group="north")
    assert selects(policy, "leafnet", "gw-001", ["north"])
    assert not selects(policy, "leafnet", "gw-001", ["south"])
    assert not selects(policy, "leafnet", "gw-003", ["north"])


def test_version_order() -> None:
    assert is_newer("1.10.0", "1.9.2")
    assert is_newer("2.0.0", "1.99")
    assert not is_newer("0.9.0", "1.0.0")
    assert not is_newer("1.0.0", "1.0.0")
