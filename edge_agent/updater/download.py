"""Resumable HTTP download of a model's files into its staging folder, verified, then moved into its slot.

Each file downloads to ``staging/{version}/{path}.part`` (HTTP Range resume, per-read timeout,
overall deadline, bearer token), is checked against the manifest's sha256 and size, and the
staging folder becomes ``versions/{version}`` with one rename once every file is in.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from shared.errors import ManifestError
from shared.fsutil import fsync_dir
from shared.manifest import verify_artifact
from shared.messages import Artifact, DesiredModel

from ..config import UpdateSettings
from .common import UpdateRejected, crash_point
from .slots import SlotStore

logger = logging.getLogger(__name__)

CHUNK = 64 * 1024
DOWNLOAD_ATTEMPTS = 3


def download(
    url: str,
    part: Path,
    size: int,
    token: str | None,
    timeout_s: float,
    deadline: float,
) -> None:
    """Fetch ``url`` into ``part``, resuming what is there; never more than ``size`` bytes."""
    have = part.stat().st_size if part.exists() else 0
    if have > size:
        part.unlink()
        have = 0
    if have == size:
        return
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if have:
        req.add_header("Range", f"bytes={have}-")
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        if have and resp.status != 206:
            have = 0  # the server ignored the range: start over
        length = resp.headers.get("Content-Length")
        if length is not None and have + int(length) > size:
            raise UpdateRejected("too_large", f"{url} is {have + int(length)} bytes; the manifest says {size}")
        with open(part, "ab" if have else "wb") as fh:
            while True:
                if time.monotonic() > deadline:
                    raise UpdateRejected("download_timeout", f"{url}: download deadline passed at {have} bytes")
                block = resp.read(CHUNK)
                if not block:
                    break
                have += len(block)
                if have > size:
                    raise UpdateRejected("too_large", f"{url} sent more than the manifest's {size} bytes")
                fh.write(block)
            fh.flush()
            os.fsync(fh.fileno())


def token_for(settings: UpdateSettings, url: str) -> str | None:
    """The bearer token, only for the registry's URLs when ``token_url_prefix`` says which they are."""
    if settings.token is None or (settings.token_url_prefix and not url.startswith(settings.token_url_prefix)):
        return None
    return settings.token.get_secret_value()


def _fetch_file(art: Artifact, part: Path, settings: UpdateSettings, deadline: float) -> None:
    token = token_for(settings, art.url)
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        try:
            download(art.url, part, art.size, token, settings.timeout_s, deadline)
            return
        except (urllib.error.URLError, OSError) as exc:
            if exc.errno == errno.ENOSPC:
                raise  # no room for the file: the updater tries again later, not within seconds
            if attempt == DOWNLOAD_ATTEMPTS:
                raise UpdateRejected("download_failed", f"{art.url}: {exc}") from exc
            logger.warning("download of %s failed (%s); resuming", art.url, exc)
            time.sleep(min(5.0, attempt * 0.5))  # backoff between attempts, not synchronisation
        except UpdateRejected:
            part.unlink(missing_ok=True)
            raise


def fetch_version(
    store: SlotStore,
    d: DesiredModel,
    wanted: list[Artifact],
    settings: UpdateSettings,
    verifying: Callable[[], None],
) -> None:
    """Download ``wanted`` into staging, verify it, and move it to ``versions/{version}``.

    ``verifying`` is called between the download and the checks (the status says so).
    """
    name, version, m = d.model_name, d.version, d.manifest
    final = store.version_dir(name, version)
    staging = store.staging_dir(name, version)
    staging.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + settings.download_deadline_s
    for art in wanted:
        _fetch_file(art, staging / (m.file(art.variant).path + ".part"), settings, deadline)
    crash_point("downloaded")
    verifying()
    for art in wanted:
        entry = m.file(art.variant)
        part = staging / (entry.path + ".part")
        try:
            verify_artifact(m, art.variant, part)
        except ManifestError as exc:
            part.unlink(missing_ok=True)  # a bad file must not be resumed
            raise UpdateRejected(exc.reason, str(exc)) from exc
        os.replace(part, staging / entry.path)
    m.save(staging / "manifest.json")
    fsync_dir(staging)
    crash_point("verified")
    if final.exists():
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    os.rename(staging, final)
    fsync_dir(final.parent)
    crash_point("staged")
