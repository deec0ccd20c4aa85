"""Synthetic cube -> train -> report beside baselines -> ONNX export -> onnxruntime parity -> signed manifest."""

from __future__ import annotations

import csv
import json
from datetime import date
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from cloud_trainer.yield_model import data_cmds, export, train
from cloud_trainer.yield_model.cube import load_cube, write_cube
from cloud_trainer.yield_model.synth import SynthConfig, generate
from shared.manifest import (
    ModelManifest,
    TrustedKeys,
    generate_keypair,
    load_public_key,
    verify_artifact,
    verify_manifest,
)
from shared.messages import ModelRef, YieldEstimate, YieldQuantiles, parse_device_message

torch.set_num_threads(1)
FAST = ["--threads", "1", "--quiet", "--hidden", "16", "--batch-size", "16"]


@pytest.fixture(scope="module")
def synth_cube(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "synth.nc"
    assert (
        data_cmds.synth_yield_main([str(out), "--fields", "60", "--seasons", "3", "--days", "60", "--seed", "1"]) == 0
    )
    return out


@pytest.fixture(scope="module")
def run_dir(synth_cube, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "cnn"
    rc = train.main_cli(["--cube", str(synth_cube), "--output-dir", str(out), "--epochs", "40", "--lr", "5e-3", *FAST])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Path, Path]:
    private, public, _ = generate_keypair(tmp_path_factory.mktemp("keys"))
    return private, public


def test_run_folder_holds_config_report_predictions_and_plots(run_dir):
    config = json.loads((run_dir / "config.json").read_text())
    assert config["task"] == "yield_forecast" and config["split"]["by"] == "year"
    assert config["split"]["test_year"] == 2021 and config["split"]["train_years"] == [2019, 2020]
    for name in ("best.pt", "checkpoint.pt", "report.md", "cube_report.json", "reference_inputs.npz"):
        assert (run_dir / name).is_file(), name
    for plot in ("pred_vs_actual.png", "error_vs_progress.png"):
        assert (run_dir / "plots" / plot).stat().st_size > 5000
    rows = list(csv.DictReader((run_dir / "predictions.csv").open()))
    progress = sorted({round(float(r["season_progress"]), 2) for r in rows})
    assert progress == [0.25, 0.5, 0.75, 1.0], "each prediction states how far into the season it reached"
    assert {int(r["days_into_season"]) for r in rows} == {15, 30, 45, 60}


def test_network_clearly_beats_the_training_mean_and_sharpens_with_the_season(run_dir):
    report = json.loads((run_dir / "report.json").read_text())
    net = report["network"]
    mean_rmse = report["baselines"]["training_mean"]["1"]["rmse"]
    assert net["1"]["rmse"] < 0.5 * mean_rmse, (net["1"], mean_rmse)
    assert net["1"]["r2"] > 0.6
    assert report["network_beats"]["training_mean"] == {"rmse": True, "mae": True, "r2": True}
    assert net["1"]["rmse"] < net["0.25"]["rmse"], "a full season must forecast better than its first quarter"
    assert 0.4 <= net["1"]["coverage_10_90"] <= 1.0
    assert set(report["baselines"]) == {"training_mean", "ridge_aggregates", "gbr_aggregates"}
    without = report["network_rmse_without_variable"]
    assert set(without) == set(json.loads((run_dir / "config.json").read_text())["channels"])
    assert all(np.isfinite(v) for v in without.values())
    assert "Does the network beat each baseline" in (run_dir / "report.md").read_text()


def test_export_parity_signed_manifest_and_self_test(run_dir, keys, tmp_path):
    private, public = keys
    _, path = export.export_run(run_dir, private, out_dir=tmp_path, version="1.0.0")
    loaded = ModelManifest.load(path)
    verify_manifest(loaded, TrustedKeys([load_public_key(str(public))]))
    onnx_path = tmp_path / loaded.file("fp32").path
    verify_artifact(loaded, "fp32", onnx_path)
    assert loaded.task == "yield_forecast"
    pre = loaded.preprocessing
    assert pre.kind == "season" and pre.time_steps == 60 and pre.target_unit == "t ha-1"
    dyn = [v for v in pre.variables if not v.static]
    assert [v.name for v in dyn] == json.loads((run_dir / "config.json").read_text())["channels"]
    assert {v.unit for v in dyn} >= {"degC", "mm", "m3 m-3"}
    assert [i.name for i in loaded.inputs] == ["season", "static"]
    assert loaded.inputs[0].shape == ["batch", 60, len(dyn)]

    # The device's self-test: run the file on the manifest's inputs, compare to its expected outputs.
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds = {k: v.to_array() for k, v in loaded.self_test_inputs.items()}
    assert np.isnan(feeds["season"][0]).any(), "the self-test includes a half season (NaN tail)"
    got = dict(zip(export.OUTPUTS, session.run(list(export.OUTPUTS), feeds), strict=True))
    for name, want in loaded.file("fp32").expected_outputs.items():
        np.testing.assert_allclose(got[name], want.to_array(), atol=loaded.file("fp32").atol)
    np.testing.assert_allclose(got["season_progress"], [0.5, 1.0])

    # What the edge agent sends from these outputs must be a valid YieldEstimate message.
    pre = loaded.preprocessing
    msg = YieldEstimate(
        farm_id="farm1",
        device_id="dev1",
        model=ModelRef(name=loaded.name, version=loaded.version, sha256=loaded.sha256),
        season_start=date(2021, 5, 1),
        days_into_season=round(float(got["season_progress"][0]) * pre.time_steps * pre.time_step_days),
        season_progress=float(got["season_progress"][0]),
        expected=float(got["yield"][0]),
        quantiles=YieldQuantiles(**dict(zip(("p10", "p50", "p90"), map(float, got["quantiles"][0]), strict=True))),
        unit=pre.target_unit,
    )
    assert parse_device_message(msg.to_json()).days_into_season == 30

    # Parity with torch on real test seasons at a batch size the export never saw.
    _, model = export.load_run(run_dir)
    ref = np.load(run_dir / "reference_inputs.npz")
    a = export.run_ort(session, ref["season"][:5], ref["static"][:5])
    b = export.run_torch(model, ref["season"][:5], ref["static"][:5])
    for name in export.OUTPUTS:
        np.testing.assert_allclose(a[name], b[name], atol=1e-4)
    assert loaded.metrics["test_rmse"] == pytest.approx(
        json.loads((run_dir / "report.json").read_text())["network"]["1"]["rmse"]
    )


def test_export_refuses_a_run_of_another_task(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"task": "disease_classification"}))
    with pytest.raises(export.ExportError, match="not 'yield_forecast'"):
        export.export_run(tmp_path, None)


def test_resume_continues_where_it_stopped(synth_cube, tmp_path):
    out = tmp_path / "run"
    args = ["--cube", str(synth_cube), "--output-dir", str(out), "--no-plots", "--patience", "100", *FAST]
    assert train.main_cli([*args, "--epochs", "2"]) == 0
    assert train.main_cli([*args, "--epochs", "4", "--resume"]) == 0
    history = json.loads((out / "report.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["state"]["epoch"] == 4 and ckpt["scheduler"]["T_max"] == 4


def test_gru_trains_and_exports_with_parity(synth_cube, tmp_path):
    out = tmp_path / "gru"
    args = ["--cube", str(synth_cube), "--output-dir", str(out), "--arch", "gru", "--epochs", "2", "--no-plots"]
    assert train.main_cli([*args, *FAST]) == 0
    manifest, _ = export.export_run(out, None, version="0.0.1")
    assert manifest.signature is None and manifest.notes["arch"] == "gru"
    assert manifest.files[0].metrics["parity_max_abs_diff"] <= 1e-4


def test_a_renamed_cube_trains_through_the_spec_alone(synth_cube, tmp_path):
    """The user's own names for dims and variables reach the manifest without renaming the file."""
    ds = load_cube(synth_cube).ds
    user = ds.rename({"sample": "plot", "time": "das", "season_year": "campaign", "ndvi": "NDVI_S2", "yield": "grain"})
    user = user.drop_vars(["crop"])
    for v in user.data_vars.values():
        v.attrs.pop("cropwatch_role", None)
    user.attrs = {}
    user.to_netcdf(tmp_path / "user.nc")
    (tmp_path / "map.toml").write_text(
        '[cube]\nsample_dim = "plot"\ntime_dim = "das"\ntarget = "grain"\ntarget_unit = "t/ha"\nyear = "campaign"\n'
        '[dynamic]\nndvi = "NDVI_S2"\nsoil_moisture = "soil_moisture.mean"\n[static]\nawc = "soil_awc"\n'
    )
    out = tmp_path / "run"
    args = ["--cube", str(tmp_path / "user.nc"), "--spec", str(tmp_path / "map.toml"), "--output-dir", str(out)]
    assert train.main_cli([*args, "--epochs", "2", "--no-plots", *FAST]) == 0
    manifest, _ = export.export_run(out, None, version="0.0.2")
    assert [v.name for v in manifest.preprocessing.variables] == ["ndvi", "soil_moisture", "awc"]
    assert manifest.preprocessing.target_unit == "t/ha" and manifest.inputs[0].shape == ["batch", 60, 2]


def test_ddp_two_processes_with_gloo(synth_cube, tmp_path):
    """torchrun with two CPU processes: gloo backend, sharded sampler, one report from rank 0."""
    import os
    import subprocess
    import sys

    from tests.services import free_port

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port())]
    cmd += ["-m", "cloud_trainer.yield_model.train", "--cube", str(synth_cube), "--output-dir", str(out)]
    cmd += ["--epochs", "2", "--no-plots", *FAST]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    assert [h["epoch"] for h in json.loads((out / "report.json").read_text())["history"]] == [1, 2]


def test_histogram_cnn_trains_and_exports_with_parity(tmp_path):
    cube = tmp_path / "hist.zarr"
    args = [str(cube), "--fields", "12", "--seasons", "2", "--days", "40", "--histogram-bins", "6"]
    assert data_cmds.synth_yield_main(args) == 0
    out = tmp_path / "run"
    assert train.main_cli(["--cube", str(cube), "--output-dir", str(out), "--epochs", "2", "--no-plots", *FAST]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["hist_vars"] == 1 and config["model"]["hist_bins"] == 6
    assert config["channels"][-6:] == [f"ndvi_hist[{b}]" for b in range(6)]
    manifest, _ = export.export_run(out, None, version="0.0.3")
    assert manifest.inputs[0].shape == ["batch", 40, 12]
    assert manifest.files[0].metrics["parity_max_abs_diff"] <= 1e-4


def test_a_cube_with_only_time_varying_inputs_trains_and_exports(tmp_path):
    """No static or categorical variables: zero static columns all the way to an ONNX with one input."""
    ds = generate(SynthConfig(fields=10, seasons=2, days=30, seed=5))
    full = load_cube(ds)
    cube = write_cube(ds.drop_vars([*full.static, *full.categorical]), tmp_path / "time_only.nc")
    out = tmp_path / "run"
    assert train.main_cli(["--cube", str(cube), "--output-dir", str(out), "--epochs", "1", "--no-plots", *FAST]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["static"] == [] and config["model"]["n_static"] == 0
    ref = np.load(out / "reference_inputs.npz")
    assert ref["static"].shape == (ref["season"].shape[0], 0)

    manifest, _ = export.export_run(out, None, version="0.0.5")
    assert [i.name for i in manifest.inputs] == ["season"] and set(manifest.self_test_inputs) == {"season"}
    assert not any(v.static for v in manifest.preprocessing.variables)
    session = ort.InferenceSession(str(out / "export" / manifest.files[0].path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["season"]
    _, model = export.load_run(out)
    a = export.run_ort(session, ref["season"], ref["static"])
    b = export.run_torch(model, ref["season"], ref["static"])
    for name in export.OUTPUTS:
        np.testing.assert_allclose(a[name], b[name], atol=1e-4)


@pytest.mark.gpu
def test_trains_on_cuda_and_exports_with_parity(synth_cube, tmp_path):
    out = tmp_path / "cuda"
    args = ["--cube", str(synth_cube), "--output-dir", str(out), "--epochs", "3", "--device", "cuda", "--no-plots"]
    assert train.main_cli([*args, *FAST]) == 0
    manifest, _ = export.export_run(out, None, version="0.0.4")
    assert manifest.files[0].metrics["parity_max_abs_diff"] <= 1e-4
