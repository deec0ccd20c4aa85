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
from pathlib import Path

from . import ImageItem, SourceContext, ThreadedSource

logger = logging.getLogger(__name__)

MAX_FILE_BYTES = 64 * 1024 * 1024


class FolderWatcher(ThreadedSource):
    def __init__(self, settings, ctx: SourceContext) -> None:  # type: ignore[no-untyped-def]
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
                on_done=lambda ok, p=path, k=key: self._done(p, k, ok),
                requested=requested,
            )
            if not self.ctx.submit(item):
                self.ctx.release(self.name, key)
                return

    def _done(self, path: Path, key: str, ok: bool) -> None:
        self.ctx.release(self.name, key)
        self._after(path, ok)

    def _after(self, path: Path, ok: bool) -> None:
        action = self.settings.after
        try:
            if action == "delete" and ok:
                path.unlink(missing_ok=True)
            elif action == "move":
                target_dir = Path(self.settings.move_to) / ("" if ok else "rejected")
                target_dir.mkdir(parents=True, exist_ok=True)
                if path.exists():
                    os.replace(path, target_dir / path.name)
        except OSError as exc:
            logger.warning("cannot %s %s after processing: %s", action, path, exc)
            self.ctx.count_error("file_after_action")
