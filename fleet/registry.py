"""The model registry: a folder of immutable, signed model versions.

Layout::

    ROOT/{name}/{version}/manifest.json      signed ModelManifest
    ROOT/{name}/{version}/<files>            the ONNX variants the manifest lists
    ROOT/{name}/{version}/retired.json       present once a version is retired (kept, not published)

A version enters only through :meth:`Registry.import_version`, which verifies the signature and
every file, copies into a staging folder inside ROOT and renames it into place, so a reader never
sees half a version. Versions are immutable: importing the same version again is a no-op when the
bytes are identical and an error when anything differs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import ManifestError
from shared.fsutil import atomic_write_text, fsync_dir
from shared.ids import ID_RE, utcnow
from shared.manifest import ModelManifest, TrustedKeys, sha256_file, verify_artifact, verify_manifest

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
RETIRED = "retired.json"


class RegistryError(Exception):
    """A registry operation that cannot be done; the message says why and what to do."""


@dataclass(frozen=True)
class Entry:
    name: str
    version: str
    path: Path
    manifest: ModelManifest
    retired: dict[str, Any] | None

    @property
    def files(self) -> list[Path]:
        return [self.path / f.path for f in self.manifest.files]


class Registry:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _version_dir(self, name: str, version: str) -> Path:
        if not ID_RE.fullmatch(name):
            raise RegistryError(f"model name {name!r} must match [a-z0-9][a-z0-9_-]{{0,63}}")
        if not version or "/" in version or version.startswith(".") or len(version) > 64:
            raise RegistryError(f"version {version!r} is not a valid version string")
        return self.root / name / version

    def get(self, name: str, version: str) -> Entry:
        path = self._version_dir(name, version)
        if not (path / MANIFEST).is_file():
            raise RegistryError(f"{name} {version} is not in the registry at {self.root}")
        manifest = ModelManifest.load(path / MANIFEST)
        retired = json.loads((path / RETIRED).read_text()) if (path / RETIRED).exists() else None
        return Entry(name, version, path, manifest, retired)

    def entries(self, name: str | None = None) -> list[Entry]:
        out: list[Entry] = []
        if not self.root.is_dir():
            return out
        names = [name] if name else sorted(p.name for p in self.root.iterdir() if p.is_dir())
        for n in names:
            if not ID_RE.fullmatch(n) or not (self.root / n).is_dir():
                continue
            for vdir in sorted((self.root / n).iterdir(), key=lambda p: p.stat().st_mtime):
                if vdir.is_dir() and not vdir.name.startswith(".") and (vdir / MANIFEST).is_file():
                    try:
                        out.append(self.get(n, vdir.name))
                    except (ManifestError, RegistryError, ValueError) as exc:
                        logger.warning("skipping %s: %s", vdir, exc)
        return out

    def import_version(self, manifest_path: str | os.PathLike[str], trusted: TrustedKeys) -> tuple[Entry, bool]:
        """Verify and add a version; returns (entry, created). Raises RegistryError or ManifestError."""
        manifest_path = Path(manifest_path)
        manifest = ModelManifest.load(manifest_path)
        verify_manifest(manifest, trusted)
        source_dir = manifest_path.parent
        for f in manifest.files:
            verify_artifact(manifest, f.variant, source_dir / f.path)
        target = self._version_dir(manifest.name, manifest.version)
        if (target / MANIFEST).exists():
            existing = self.get(manifest.name, manifest.version)
            same = existing.manifest == manifest and all(
                sha256_file(target / f.path)[0] == f.sha256 for f in existing.manifest.files
            )
            if same:
                return existing, False
            raise RegistryError(
                f"{manifest.name} {manifest.version} is already in the registry with different content; "
                "versions are immutable, so give the new model a new version"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{manifest.version}.", dir=target.parent))
        try:
            for f in manifest.files:
                shutil.copyfile(source_dir / f.path, staging / f.path)
                with open(staging / f.path, "rb+") as fh:
                    os.fsync(fh.fileno())
                verify_artifact(manifest, f.variant, staging / f.path)
            manifest.save(staging / MANIFEST)
            fsync_dir(staging)
            os.rename(staging, target)
            fsync_dir(target.parent)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        logger.info("imported %s %s into %s", manifest.name, manifest.version, self.root)
        return self.get(manifest.name, manifest.version), True

    def retire(self, name: str, version: str, reason: str) -> Entry:
        entry = self.get(name, version)
        atomic_write_text(entry.path / RETIRED, json.dumps({"retired_at": utcnow().isoformat(), "reason": reason}))
        return self.get(name, version)

    def file_path(self, name: str, version: str, filename: str) -> Path | None:
        """The file a URL names, or None; only names the manifest lists (or the manifest) resolve."""
        try:
            entry = self.get(name, version)
        except (RegistryError, ManifestError):
            return None
        allowed = {f.path for f in entry.manifest.files} | {MANIFEST}
        return entry.path / filename if filename in allowed else None
