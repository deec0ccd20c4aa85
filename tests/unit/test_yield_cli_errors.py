"""The yield commands report what the user got wrong, and the fix, on one line: never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cloud_trainer import export_cli, train_cli
from cloud_trainer.yield_model.cube import write_cube
from cloud_trainer.yield_model.synth import SynthConfig, generate
from cropwatch import data_cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cube(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cube(
        generate(SynthConfig(fields=6, seasons=2, days=20, seed=4)), tmp_path_factory.mktemp("c") / "c.nc"
    )


def _one_error_line(capsys: pytest.CaptureFixture[str], prog: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: "), lines[0]
    return lines[0]


def test_missing_cube_names_the_path_and_how_to_make_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = train_cli.main(
        ["yield", "--cube", str(tmp_path / "nope.nc"), "--output-dir", str(tmp_path)], "cropwatch train"
    )
    assert rc != 0
    line = _one_error_line(capsys, "cropwatch train yield")
    assert "nope.nc" in line and "cropwatch data synth-yield" in line


def test_a_file_that_is_not_a_cube_says_which_formats_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "notes.nc"
    bad.write_text("not a netcdf file")
    assert train_cli.main(["yield", "--cube", str(bad), "--output-dir", str(tmp_path / "r")], "cropwatch train") != 0
    line = _one_error_line(capsys, "cropwatch train yield")
    assert "notes.nc" in line and "NetCDF" in line and "Zarr" in line


def test_broken_spec_is_one_line(cube: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "map.toml"
    spec.write_text('target = "grain"\n[dynamic\nndvi = "NDVI"\n')
    args = ["yield", "--cube", str(cube), "--spec", str(spec), "--output-dir", str(tmp_path / "r")]
    assert train_cli.main(args, "cropwatch train") != 0
    assert "not valid TOML" in _one_error_line(capsys, "cropwatch train yield")
    spec.write_text('sample_dim = 3\nwhat = "x"\n')
    assert train_cli.main(args, "cropwatch train") != 0
    assert "invalid mapping spec" in _one_error_line(capsys, "cropwatch train yield")


def test_cube_error_names_the_variable_and_the_fix(
    cube: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "map.toml"
    spec.write_text('target = "grain"\n')
    args = ["yield", "--cube", str(cube), "--spec", str(spec), "--output-dir", str(tmp_path / "r")]
    assert train_cli.main(args, "cropwatch train") != 0
    line = _one_error_line(capsys, "cropwatch train yield")
    assert "'grain'" in line and "mapping spec" in line and "[missing_target]" in line


def test_options_that_do_not_fit_the_cube(cube: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["yield", "--cube", str(cube), "--output-dir", str(tmp_path / "r"), "--test-year", "1999", "--quiet"]
    assert train_cli.main(args, "cropwatch train") != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("cropwatch train yield: --test-year 1999 is not in the cube")
    args = ["yield", "--cube", str(cube), "--output-dir", str(tmp_path / "r2"), "--resume", "--quiet"]
    assert train_cli.main(args, "cropwatch train") != 0
    assert "drop --resume" in capsys.readouterr().err.strip().splitlines()[-1]


def test_export_of_an_unfinished_yield_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "run.json").write_text(json.dumps({"task": "yield_forecast"}))
    assert export_cli.main([str(tmp_path), "--allow-unsigned"], "cropwatch export") != 0
    assert "config.json" in _one_error_line(capsys, "cropwatch export")
    assert export_cli.main([str(tmp_path), "--key", str(tmp_path / "k.key")], "cropwatch export") != 0
    assert "cropwatch keys generate" in _one_error_line(capsys, "cropwatch export")


def test_data_commands_report_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert data_cli.main(["iowa-cube", str(tmp_path / "o.nc"), "--source", str(tmp_path)], "cropwatch data") != 0
    assert "--source" in _one_error_line(capsys, "cropwatch data iowa-cube")
    blocker = tmp_path / "file"
    blocker.write_text("")
    args = ["synth-yield", str(blocker / "sub" / "c.nc"), "--fields", "2", "--seasons", "1", "--days", "8"]
    assert data_cli.main(args, "cropwatch data") != 0
    assert str(blocker) in _one_error_line(capsys, "cropwatch data synth-yield")


def test_a_process_prints_the_error_not_a_traceback(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "cloud_trainer.yield_model.train", "--cube", str(tmp_path / "missing.nc")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"python -m cloud_trainer.yield_model.train: no season cube at {tmp_path / 'missing.nc'}; check the path, "
        "or write one with 'cropwatch data synth-yield FILE.nc' or 'cropwatch data iowa-cube FILE.nc' [no_file]"
    ]
