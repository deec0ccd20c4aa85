"""Slot files of one role (champion or shadow), per model name, and their crash-safe state.

``state.json`` is only ever replaced with :func:`shared.fsutil.atomic_write_text`, and a version
folder appears under ``versions/`` with one rename once complete and verified, so a crash between
any two steps leaves a state that names complete, verified versions only.

A write that fails (a full disk) raises and leaves the old file whole, so every step that changes
what serves writes the state first and acts after. A rollback or unload acts first (a failing
model must stop serving even when the disk is full) and may defer its state
(:meth:`SlotStore.write_or_defer`): reads see the deferred state, :meth:`SlotStore.flush` writes
it later, and the older copy on disk meanwhile means the same at boot (a trial there is rolled back).
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from shared.errors import ManifestError
from shared.fsutil import atomic_write_text
from shared.manifest import ModelManifest

from .common import DISEASE

logger = logging.getLogger(__name__)


class SlotStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        # Per model name: a state not yet on disk (its write failed); it is what reads return.
        self._unsaved: dict[str, dict[str, Any]] = {}

    def state_path(self, name: str) -> Path:
        return self.root / name / "state.json"

    def read(self, name: str) -> dict[str, Any]:
        unsaved = self._unsaved.get(name)
        if unsaved is not None:
            state = copy.deepcopy(unsaved)
        else:
            try:
                state = json.loads(self.state_path(name).read_text())
            except FileNotFoundError:
                state = {}
        return {"active": None, "trial": None, "previous": None, "failed": {}, **state}

    def write(self, name: str, state: dict[str, Any]) -> None:
        """Replace ``state.json`` atomically; an OSError (e.g. ENOSPC) leaves the old file as it was."""
        self.state_path(name).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.state_path(name), json.dumps(state, sort_keys=True))
        # Callers read, change and write: this state includes a deferred one, which is now on disk.
        self._unsaved.pop(name, None)

    def write_or_defer(self, name: str, state: dict[str, Any]) -> bool:
        """Write ``state``, or keep it for :meth:`flush` when the write fails; False when deferred.

        Only for a change already made in memory whose old state on disk leads to the same
        outcome at boot (see the module docstring).
        """
        try:
            self.write(name, state)
            return True
        except OSError as exc:
            logger.warning("slot state of %s not written (%s); written when the disk allows", name, exc)
            self._unsaved[name] = copy.deepcopy(state)
            return False

    @property
    def unsaved(self) -> bool:
        return bool(self._unsaved)

    def flush(self) -> None:
        """Write the deferred states (raises OSError while the disk still refuses)."""
        for name, state in list(self._unsaved.items()):
            self.write(name, state)
            logger.info("deferred slot state of %s written", name)

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
