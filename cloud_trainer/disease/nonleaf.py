"""Frames that are not a leaf: what a field camera also sees (soil, sky, hands, tools, blank, blur).

Two sources, both reproducible and shippable:

- generated frames (numpy, seeded): blank and near-blank frames, sensor noise, sky gradients,
  soil-like speckle, and blurred versions of those;
- scikit-image's bundled photographs (``skimage.data``: an astronaut, a cat, coffee, a rocket,
  coins, a man with a camera, ...), as whole frames and crops, with a blurred copy of each.

The skimage photographs are split by photograph into a ``fit`` half and a ``held_out`` half, so a
gate fitted on one half is measured on photographs it never saw.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageFilter

logger = logging.getLogger(__name__)

# Colour photographs of things that are not leaves; a few greyscale ones (camera man, coins, moon,
# text) are turned into RGB. Split by photograph, alternating, so both halves have both kinds.
SKIMAGE_PHOTOS = (
    "astronaut", "camera", "chelsea", "coffee", "coins", "rocket", "moon", "page", "text", "clock",
    "horse", "immunohistochemistry", "hubble_deep_field", "retina", "brick", "gravel", "cell",
    "logo", "colorwheel", "motorcycle", "cat", "binary_blobs",
)  # fmt: skip


def _rgb(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.dtype != np.uint8:
        a = (255 * (a - a.min()) / max(float(a.max() - a.min()), 1e-9)).astype(np.uint8)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    return a[..., :3]


def _jpeg(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _blur(a: np.ndarray, radius: float) -> np.ndarray:
    return np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(radius)))


def skimage_frames(half: str) -> Iterator[tuple[str, bytes]]:
    """(name, JPEG) of one half (``fit`` or ``held_out``) of the skimage photographs: whole, a crop, blurred."""
    from skimage import data

    for i, name in enumerate(SKIMAGE_PHOTOS):
        if (i % 2 == 0) != (half == "fit"):
            continue
        loader = getattr(data, "stereo_motorcycle" if name == "motorcycle" else name, None)
        if loader is None:
            continue
        try:
            img = loader()
        except Exception as exc:  # a photograph this scikit-image must download (offline): skip it
            logger.warning("skimage photograph %s unavailable (%s); skipped", name, exc)
            continue
        img = _rgb(img[0] if isinstance(img, tuple) else img)
        h, w = img.shape[:2]
        crop = img[h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2]
        yield f"skimage-{name}", _jpeg(img)
        yield f"skimage-{name}-crop", _jpeg(crop)
        yield f"skimage-{name}-blur", _jpeg(_blur(img, max(h, w) / 40))


def generated_frames(n: int, seed: int) -> Iterator[tuple[str, bytes]]:
    """(kind, JPEG) of ``n`` generated frames, cycling blank, noise, sky, soil and blurred ones."""
    rng = np.random.default_rng(seed)
    kinds = ("blank", "noise", "sky", "soil", "blurred-soil", "dark")
    size = 256
    for i in range(n):
        kind = kinds[i % len(kinds)]
        if kind == "blank":
            a = np.full((size, size, 3), rng.integers(0, 256, 3), np.uint8)
        elif kind == "dark":
            a = np.clip(rng.normal(12, 6, (size, size, 3)), 0, 255).astype(np.uint8)
        elif kind == "noise":
            a = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        elif kind == "sky":
            top, bottom = rng.uniform([60, 110, 180], [120, 170, 255]), rng.uniform([170, 200, 220], [235, 240, 255])
            t = np.linspace(0, 1, size)[:, None, None]
            a = np.broadcast_to(np.asarray(top * (1 - t) + bottom * t), (size, size, 3)).astype(np.uint8)
        else:
            base = rng.uniform([70, 45, 25], [150, 110, 70])
            grain = np.kron(rng.normal(0, 25, (size // 4, size // 4, 1)), np.ones((4, 4, 1)))
            a = np.clip(base + grain + rng.normal(0, 8, (size, size, 3)), 0, 255).astype(np.uint8)
            if kind == "blurred-soil":
                a = _blur(a, 6)
        yield kind, _jpeg(np.ascontiguousarray(a))


def held_out_frames(seed: int = 1) -> list[tuple[str, bytes]]:
    """The evaluation set: the held-out skimage photographs and 36 generated frames."""
    return [*skimage_frames("held_out"), *generated_frames(36, seed)]
