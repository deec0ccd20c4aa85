"""The edge extra resolves without torch, streamlit or SQLAlchemy (a field device cannot carry them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN_ON_EDGE = {"torch", "torchvision", "timm", "streamlit", "sqlalchemy", "pandas"}


def resolve(extra: str, tmp_path: Path) -> set[str]:
    report = tmp_path / f"{extra}.json"
    cmd = [
        sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
        "--report", str(report), f"{REPO}[{extra}]",
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        if "No matching distribution" in result.stderr or "Could not find a version" in result.stderr:
            pytest.fail(f"pip could not resolve .[{extra}]: {result.stderr[-2000:]}")
        pytest.fail(f"pip failed: {result.stderr[-2000:]}")
    doc = json.loads(report.read_text())
    return {item["metadata"]["name"].lower().replace("_", "-") for item in doc["install"]}


def test_edge_extra_pulls_no_torch_streamlit_or_sqlalchemy(tmp_path: Path) -> None:
    names = resolve("edge", tmp_path)
    assert {"onnxruntime", "paho-mqtt", "numpy", "pillow", "pydantic", "cryptography"} <= names
    assert not names & FORBIDDEN_ON_EDGE, names & FORBIDDEN_ON_EDGE
