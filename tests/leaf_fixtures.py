"""Small leaf-dataset trees in the layouts people download, for the import tests.

Images are smooth random colour fields (an 8x8 random image scaled up), so any two differ by about
half of their perceptual-hash bits while a resized, re-encoded copy stays within a few bits.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 96


def jpeg_bytes(seed: int, size: int = SIZE, quality: int = 90) -> bytes:
    rng = np.random.default_rng(seed)
    small = (rng.random((8, 8, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def write_jpeg(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes(seed))
    return path


def near_copy(src: Path, dst: Path) -> Path:
    """A resized (96 -> 80 px), re-encoded (quality 70) copy: a near-duplicate, not an exact one."""
    img = Image.open(src).convert("RGB").resize((80, 80), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=70)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(buf.getvalue())
    return dst


def add_bad_files(folder: Path, seed: int) -> None:
    """One of each thing an import must skip: corrupt, truncated, empty, not an image."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"garbage" * 20)
    whole = jpeg_bytes(seed)
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("photographed on a cloudy day\n")


BAD = {"corrupt": 1, "truncated": 1, "empty": 1, "not_an_image": 1}
