"""Resume gives the run it interrupted; DDP with two CPU processes (gloo) trains and writes one run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cloud_trainer import train_cli
from cropwatch import data_cli
from tests.services import cropwatch_env

torch.set_num_threads(1)

TINY = [
    "--arch",
    "resnet18",
    "--image-size",
    "32",
    "--batch-size",
    "4",
    "--threads",
    "1",
    "--quiet",
    "--pretrained",
    "none",
    "--patience",
    "99",
    # No trust head (it is tested in test_disease_pipeline.py); the field recipe stays on, so resume
    # and DDP are shown with the default augmentation and the class-balanced sampler.
    "--abstain-score",
    "energy",
]
RECIPE_OFF = ["--no-field-background", "--no-shadows", "--no-perspective", "--no-jpeg", "--no-balanced"]


@pytest.fixture(scope="module")
def leaves(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("leaves") / "d"
    assert (
        data_cli.main(["synth-leaves", str(data), "--classes", "2", "--per-class", "8", "--size", "36", "--quiet"], "t")
        == 0
    )
    return data


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]


def test_resume_continues_where_it_stopped(leaves: Path, tmp_path: Path) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train_cli.main(["disease", "--data", str(leaves), "--out", str(straight), "--epochs", "3", *TINY], "t") == 0
    rc = train_cli.main(
        ["disease", "--data", str(leaves), "--out", str(resumed), "--epochs", "3", "--stop-after-epochs", "2", *TINY],
        "t",
    )
    assert rc == 0
    assert not (resumed / "run.json").exists()  # paused, not finished
    ckpt = torch.load(resumed / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 1
    rc = train_cli.main(
        ["disease", "--data", str(leaves), "--out", str(resumed), "--epochs", "3", "--resume", "auto", *TINY], "t"
    )
    assert rc == 0
    history = (resumed / "history.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in history[1:]] == ["1", "2", "3"]
    a, b = _weights(straight), _weights(resumed)
    # Same data order and augmentation per epoch, same optimizer state: the same weights.
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    assert (straight / "split.csv").read_text() == (resumed / "split.csv").read_text()


def test_resume_from_missing_checkpoint_is_an_error(leaves: Path, tmp_path: Path) -> None:
    rc = train_cli.main(
        ["disease", "--data", str(leaves), "--out", str(tmp_path / "x"), "--epochs", "1", "--resume", "auto", *TINY],
        "t",
    )
    assert rc == 2


def test_ddp_two_cpu_processes_with_gloo(leaves: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    env = cropwatch_env(OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "cloud_trainer.disease.train", "--data", str(leaves), "--out", str(run), "--epochs", "2", *TINY,
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((run / "config.json").read_text())
    assert config["world_size"] == 2 and config["device"] == "cpu"
    info = json.loads((run / "run.json").read_text())
    assert info["epochs_run"] == 2
    assert "[rank 0]" in proc.stderr and "epoch 2/2" in proc.stderr
    # rank 1 writes nothing of its own: one history, one checkpoint
    assert len((run / "history.csv").read_text().splitlines()) == 3


def test_trains_from_a_label_csv(leaves: Path, tmp_path: Path) -> None:
    # The form the monitor's labelling queue exports: path,label rows beside the images.
    run = tmp_path / "csv-run"
    rc = train_cli.main(
        ["disease", "--data", str(leaves / "labels.csv"), "--out", str(run), "--epochs", "1", *TINY, *RECIPE_OFF], "t"
    )
    assert rc == 0
    dataset = json.loads((run / "dataset.json").read_text())
    assert dataset["source"] == "csv" and dataset["images"] == 16 and dataset["synthetic"] is True
    assert json.loads((run / "run.json").read_text())["data"].endswith("labels.csv")
