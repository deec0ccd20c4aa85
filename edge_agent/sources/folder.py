"""Watched folder: new JPEG/PNG files from a camera trap or an upload drop, each processed once.

A file is identified by name, size and modification time; that key is stored in the outbox
database in the same transaction as the file's results, so a restart neither repeats nor skips
it. Files younger than ``settle_s`` are left for the next scan (still being written). After
processing a file is kept, moved or deleted per config; rejected files (corrupt, truncated) are
counted and, with ``after = "move"``, moved to ``move_to/rejected``.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from . import SOURCES, ImageItem, SourceContext, SourceSettings, ThreadedSource

logger = logging.getLogger(__name__)

MAX_FILE_BYTES = 64 * 1024 * 1024


class FolderSettings(SourceSettings):
    type: Literal["folder"] = "folder"
    path: Path
    patterns: list[str] = Field(default_factory=lambda: ["*.jpg", "*.jpeg", "*.png", "*.JPG", "*.JPEG", "*.PNG"])
    after: Literal["keep", "move", "delete"] = "keep"
    move_to: Path | None = None
    scan_interval_s: Annotated[float, Field(gt=0)] = 2.0
    # A file must be this old (by mtime) before it is read, so an upload still being written is left alone.
    settle_s: Annotated[float, Field(ge=0)] = 1.0

    @model_validator(mode="after")
    def _move_target(self) -> FolderSettings:
        if self.after == "move" and self.move_to is None:
            raise ValueError("after = 'move' needs move_to")
        return self


class FolderWatcher(ThreadedSource):
    def __init__(self, settings: FolderSettings, ctx: SourceContext) -> None:
        super().__init__(settings.name, ctx)
        self.settings = settings
        self.interval_s = settings.scan_interval_s

    def setup(self) -> None:
        if not self.settings.path.is_dir():
            logger.warning("watched folder %s does not exist yet; waiting for it", self.settings.path)

    def _candidates(self) -> list[os.DirEntry[str]]:
        try:
            entries = [
                e
                for e in os.scandir(self.settings.path)
                if e.is_file(follow_symlinks=False)
                and not e.name.startswith(".")
                and any(fnmatch.fnmatchcase(e.name, p) for p in self.settings.patterns)
            ]
        except FileNotFoundError:
            return []
        entries.sort(key=lambda e: (e.stat().st_mtime_ns, e.name))
        return entries

    def tick(self, requested: bool) -> None:
        now = time.time()
        for entry in self._candidates():
            if self.stopping:
                return
            st = entry.stat()
            key = f"{entry.name}:{st.st_size}:{st.st_mtime_ns}"
            if self.ctx.is_seen(self.name, key):
                # Processed before a crash that came between the commit and the move/delete.
                self._after(Path(entry.path), ok=True)
                continue
            if now - st.st_mtime < self.settings.settle_s:
                continue
            path = Path(entry.path)
            if not self.ctx.claim(self.name, key):
                continue  # queued already, results not stored yet
            try:
                # An oversized file is handed on empty: decode counts and skips it like any bad file.
                data = b"" if st.st_size > MAX_FILE_BYTES else path.read_bytes()
            except OSError as exc:
                self.ctx.release(self.name, key)
                logger.warning("cannot read %s: %s", path, exc)
                self.ctx.count_error("file_unreadable")
                continue
            item = ImageItem(
                source=self.name,
                data=data,
                ref=f"file://{path}",
                seen_key=(self.name, key),
                on_done=self._on_done(path, key),
                requested=requested,
            )
            if not self.ctx.submit(item):
                self.ctx.release(self.name, key)
                return

    def _on_done(self, path: Path, key: str) -> Callable[[bool], None]:
        def done(ok: bool) -> None:
            self.ctx.release(self.name, key)
            self._after(path, ok)

        return done

    def _after(self, path: Path, ok: bool) -> None:
        action = self.settings.after
        try:
            if action == "delete" and ok:
                path.unlink(missing_ok=True)
            elif action == "move":
                assert self.settings.move_to is not None  # the settings validator requires it for "move"
                target_dir = self.settings.move_to / ("" if ok else "rejected")
                target_dir.mkdir(parents=True, exist_ok=True)
                if path.exists():
                    os.replace(path, target_dir / path.name)
        except OSError as exc:
            logger.warning("cannot %s %s after processing: %s", action, path, exc)
            self.ctx.count_error("file_after_action")


SOURCES.register(FolderSettings, FolderWatcher)
