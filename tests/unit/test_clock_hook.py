"""The chaos soak's clock hook (CROPWATCH_CLOCK_OFFSET_FILE): ids, utcnow and the outbox follow the offset."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from shared import ids
from shared.config import _env_overrides


def test_offset_file_moves_wall_clock_and_ids_stay_increasing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    offset = tmp_path / "offset"
    offset.write_text("7200\n")
    monkeypatch.setattr(ids, "_offset_file", str(offset))
    monkeypatch.setattr(ids, "_offset_cache", (-1.0, 0.0))
    # The id sequence remembers the jump ahead; restored afterwards, or every later id in this
    # process would carry a time two hours ahead (test_messages checks ids against the clock).
    monkeypatch.setattr(ids, "_last_ms", ids._last_ms)
    monkeypatch.setattr(ids, "_last_rand", ids._last_rand)
    assert abs(ids.wall_time() - time.time() - 7200) < 5
    assert abs(ids.utcnow().timestamp() - time.time() - 7200) < 5
    ahead = ids.new_msg_id()
    offset.write_text("-7200\n")
    import os

    os.utime(offset, (time.time() + 1, time.time() + 1))  # a new mtime even within one tick
    assert ids.wall_time() < time.time() - 7000
    # Back in time: ids made after the jump still sort after the ones before it (outbox replay order).
    assert ids.new_msg_id() > ahead


def test_no_hook_means_real_clock_and_the_variable_is_not_a_config_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ids, "_offset_file", None)
    assert abs(ids.wall_time() - time.time()) < 1
    assert _env_overrides({"CROPWATCH_CLOCK_OFFSET_FILE": "/x", "CROPWATCH_LOG__LEVEL": "debug"}, "CROPWATCH_") == {
        "log": {"level": "debug"}
    }
