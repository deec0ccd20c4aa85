"""The contract must load on a field device: no torch, streamlit, SQLAlchemy or paho in `shared`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

BLOCKER = """
import importlib.abc, pkgutil, sys
FORBIDDEN = {"torch", "torchvision", "timm", "streamlit", "sqlalchemy", "paho", "onnx", "xarray"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            raise ImportError(f"{name} must not be imported here")
        return None
sys.meta_path.insert(0, Block())
import shared
for mod in pkgutil.iter_modules(shared.__path__):
    __import__(f"shared.{mod.name}")
from shared.commands import main
assert main([], prog="cropwatch schema") == 0
print("OK", len(sys.modules))
"""


def test_shared_imports_nothing_heavy() -> None:
    result = subprocess.run([sys.executable, "-c", BLOCKER], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
