from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cropwatch import cli

REPO = Path(__file__).resolve().parents[2]


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_unknown_command_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["harvest"]) == 2
    assert "unknown command 'harvest'" in capsys.readouterr().err


def test_no_arguments_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "commands:" in capsys.readouterr().out


def test_missing_module_is_reported_as_not_implemented(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(cli.COMMANDS, "later", ("cloud_trainer.not_written_yet", "a later issue", "trainer"))
    assert cli.main(["later"]) == 3
    assert "not implemented yet" in capsys.readouterr().err


def test_missing_dependency_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(cli.COMMANDS, "needsdep", ("definitely_not_installed_pkg.x", "x", "monitor"))
    assert cli.main(["needsdep"]) == 3
    assert "pip install 'cropwatch[monitor]'" in capsys.readouterr().err


def test_schema_prints_json_schema_for_every_kind(capsys: pytest.CaptureFixture[str]) -> None:
    from jsonschema import Draft202012Validator

    from shared.messages import MESSAGE_TYPES

    assert cli.main(["schema"]) == 0
    schemas = json.loads(capsys.readouterr().out)
    assert set(schemas) == set(MESSAGE_TYPES)
    for schema in schemas.values():
        Draft202012Validator.check_schema(schema)


def test_schema_validates_the_examples_with_an_independent_validator(capsys: pytest.CaptureFixture[str]) -> None:
    from jsonschema import Draft202012Validator

    from shared.examples import example_messages

    assert cli.main(["schema"]) == 0
    schemas = json.loads(capsys.readouterr().out)
    for kind, msg in example_messages(fixed=False).items():
        Draft202012Validator(schemas[kind]).validate(json.loads(msg.to_json()))
        bad = json.loads(msg.to_json()) | {"unexpected": 1}
        assert not Draft202012Validator(schemas[kind]).is_valid(bad)


def test_keys_generate(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["keys", "generate", "--out", str(tmp_path), "--name", "k"]) == 0
    assert (tmp_path / "k.key").exists() and (tmp_path / "k.pub").exists()
    assert "key id" in capsys.readouterr().out
    assert cli.main(["keys", "generate", "--out", str(tmp_path), "--name", "k"]) == 1
    assert "never overwritten" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["version", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["schema_version"] == 1 and "cropwatch" in info


EDGE_ONLY = """
import importlib.abc, runpy, sys
NOT_ON_EDGE = {"torch", "torchvision", "timm", "streamlit", "sqlalchemy", "pandas", "rich"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in NOT_ON_EDGE:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Block())
sys.argv = ["cropwatch", *sys.argv[1:]]
runpy.run_module("cropwatch", run_name="__main__")
"""


def _edge_only(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m cropwatch ARGS`` where only the edge extra is installed."""
    return subprocess.run(
        [sys.executable, "-c", EDGE_ONLY, *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_python_m_cropwatch_runs_the_agent_help_with_only_the_edge_extra() -> None:
    result = _edge_only("agent", "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: cropwatch agent" in result.stdout


def test_the_demo_help_needs_no_extra_either() -> None:
    result = _edge_only("demo", "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: cropwatch demo" in result.stdout
