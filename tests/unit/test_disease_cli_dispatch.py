from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from cloud_trainer import export_cli, train_cli
from cropwatch import data_cli


def test_train_dispatches_to_the_task_module(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    fake = types.ModuleType("fake_trainer")
    fake.cli = lambda argv, prog: seen.update(argv=argv, prog=prog) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_trainer", fake)
    monkeypatch.setitem(train_cli.TASKS, "disease", ("fake_trainer:cli", "x"))
    assert train_cli.main(["disease", "--epochs", "1"], "cropwatch train") == 0
    assert seen == {"argv": ["--epochs", "1"], "prog": "cropwatch train disease"}


def test_train_task_without_module_says_not_implemented(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(train_cli.TASKS, "yield", ("cloud_trainer.no_such_module.train:cli", "x"))
    assert train_cli.main(["yield"], "cropwatch train") == 3
    assert "not implemented" in capsys.readouterr().err
    assert train_cli.main(["weeds"], "cropwatch train") == 2


def test_export_routes_by_the_runs_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    fake = types.ModuleType("fake_yield_export")
    fake.main = lambda argv, prog: seen.update(argv=argv) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_yield_export", fake)
    monkeypatch.setitem(export_cli.EXPORTERS, "yield_forecast", "fake_yield_export:main")
    (tmp_path / "run.json").write_text(json.dumps({"task": "yield_forecast"}))
    assert export_cli.main([str(tmp_path), "--version", "2"], "cropwatch export") == 0
    assert seen["argv"] == [str(tmp_path), "--version", "2"]


def test_export_rejects_unknown_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "run.json").write_text(json.dumps({"task": "weeds"}))
    assert export_cli.main([str(tmp_path)], "cropwatch export") == 2
    assert "unknown task 'weeds'" in capsys.readouterr().err


def test_data_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    assert data_cli.main(["--help"], "cropwatch data") == 0
    out = capsys.readouterr().out
    for name in ("synth-leaves", "synth-yield", "iowa-cube"):
        assert name in out
