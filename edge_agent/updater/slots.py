"""Slot files of one role (champion or shadow), per model name, and their crash-safe state.

``state.json`` is only ever replaced with :func:`shared.fsutil.atomic_write_text`, and a version
folder appears under ``versions/`` with one rename once complete and verified, so a crash between
any two steps leaves a state that names complete, verified versions only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from shared.errors import ManifestError
from shared.fsutil import atomic_write_text
from shared.manifest import ModelManifest

from .common import DISEASE


class SlotStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def state_path(self, name: str) -> Path:
        return self.root / name / "state.json"

    def read(self, name: str) -> dict[str, Any]:
        try:
            state = json.loads(self.state_path(name).read_text())
        except FileNotFoundError:
            state = {}
        return {"active": None, "trial": None, "previous": None, "failed": {}, **state}

    def write(self, name: str, state: dict[str, Any]) -> None:
        self.state_path(name).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.state_path(name), json.dumps(state, sort_keys=True))

    def version_dir(self, name: str, version: str) -> Path:
        return self.root / name / "versions" / version

    def staging_dir(self, name: str, version: str) -> Path:
        return self.root / name / "staging" / version

    def names(self) -> list[str]:
        return sorted(p.parent.name for p in self.root.glob("*/state.json")) if self.root.is_dir() else []

    def manifest_path(self, name: str, version: str) -> Path:
        return self.version_dir(name, version) / "manifest.json"

    def task_of(self, name: str, version: str) -> str:
        """The task of a slot version (a manifest that does not read fails to load right after)."""
        try:
            return ModelManifest.load(self.manifest_path(name, version)).task
        except (ManifestError, OSError):
            return DISEASE

    def prune(self, name: str, keep: set[str]) -> None:
        """Remove the versions of ``name`` not in ``keep``."""
        versions = self.root / name / "versions"
        for old_dir in versions.iterdir() if versions.is_dir() else []:
            if old_dir.name not in keep:
                shutil.rmtree(old_dir, ignore_errors=True)
