"""CUDA path: bf16 autocast + channels_last training step and an export from a CUDA-trained run."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud_trainer import train_cli
from cropwatch import data_cli


@pytest.mark.gpu
def test_cuda_run_with_bf16_and_channels_last(tmp_path: Path) -> None:
    import json

    data = tmp_path / "d"
    assert (
        data_cli.main(["synth-leaves", str(data), "--classes", "2", "--per-class", "8", "--size", "40", "--quiet"], "t")
        == 0
    )
    args = ["disease", "--data", str(data), "--out", str(tmp_path / "r"), "--epochs", "2", "--arch", "resnet18"]
    args += ["--image-size", "32", "--pretrained", "none", "--device", "cuda", "--workers", "0", "--quiet"]
    assert train_cli.main(args, "t") == 0
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["amp_bf16"] is True and config["channels_last"] is True
    assert config["device"].startswith("cuda")
    assert (tmp_path / "r" / "run.json").is_file()
