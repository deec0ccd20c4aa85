"""Image decode and resize: the only image code outside the model graph.

The trainer's evaluation and the field agent both call :func:`decode_image`, so a photo reaches
the network as the same uint8 HxWx3 RGB array at both ends. Large JPEGs are decoded at reduced
size (libjpeg DCT scaling via ``Image.draft``), which is several times cheaper than a full decode
of a 1080p camera frame followed by a resize.
"""

from __future__ import annotations

import io
import warnings
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageDecodeError

ResizeMode = Literal["center_crop", "stretch"]
ALLOWED_FORMATS = frozenset({"JPEG", "PNG"})
# 64 MP covers any field camera; beyond that an image is a decompression bomb until proven otherwise.
DEFAULT_MAX_PIXELS = 64_000_000
MAX_INPUT_BYTES = 64 * 1024 * 1024


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise ImageDecodeError("empty", "image is empty (0 bytes); check the camera or the upload")
    if len(data) > MAX_INPUT_BYTES:
        raise ImageDecodeError("too_large", f"image file is {len(data)} bytes, over {MAX_INPUT_BYTES}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=sorted(ALLOWED_FORMATS))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError("too_large", f"image is a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        head = data[:8]
        if head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")):
            raise ImageDecodeError("corrupt", "image starts like a JPEG/PNG but its header is damaged") from exc
        raise ImageDecodeError(
            "not_an_image", f"not a JPEG or PNG image (starts with {head!r}); only JPEG and PNG are accepted"
        ) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError("corrupt", f"image header is corrupt: {exc}") from exc
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError("corrupt", f"image has impossible size {width}x{height}")
    if width * height > max_pixels:
        raise ImageDecodeError(
            "too_large", f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}"
        )
    return img


def image_size(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) from the header alone."""
    return _open(data, max_pixels).size


def _crop_box(width: int, height: int, target_w: int, target_h: int) -> tuple[float, float, float, float]:
    """The centred region of the source that has the target's aspect ratio."""
    src_ratio, dst_ratio = width / height, target_w / target_h
    if src_ratio > dst_ratio:
        new_w = height * dst_ratio
        left = (width - new_w) / 2
        return (left, 0.0, left + new_w, float(height))
    new_h = width / dst_ratio
    top = (height - new_h) / 2
    return (0.0, top, float(width), top + new_h)


def decode_image(
    data: bytes,
    size: int | tuple[int, int],
    resize: ResizeMode = "center_crop",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """JPEG/PNG bytes to a uint8 array of shape (H, W, 3), RGB, at ``size`` ((h, w) or square).

    ``center_crop`` keeps the aspect ratio and cuts the longer side; ``stretch`` squashes.
    Raises :class:`ImageDecodeError` (reason: empty, not_an_image, corrupt, truncated, too_large).
    """
    target_h, target_w = (size, size) if isinstance(size, int) else size
    if target_h <= 0 or target_w <= 0:
        raise ValueError(f"target size must be positive, got {size}")
    img = _open(data, max_pixels)
    try:
        if img.format == "JPEG":
            # draft() picks the largest DCT scale (1/2, 1/4, 1/8) that stays at or above the
            # requested size, so quality at the target is kept while most of the work is skipped.
            # Ask for 2x the target so the final resample still averages several pixels.
            img.draft("RGB", (target_w * 2, target_h * 2))
        img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode != "RGB":
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                background = Image.new("RGB", img.size, (255, 255, 255))
                background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
                img = background
            else:
                img = img.convert("RGB")
        box = None if resize == "stretch" else _crop_box(img.width, img.height, target_w, target_h)
        if img.size != (target_w, target_h) or (box is not None and box != (0, 0, img.width, img.height)):
            img = img.resize((target_w, target_h), Image.Resampling.BILINEAR, box=box, reducing_gap=None)
        arr = np.asarray(img, dtype=np.uint8)
    except ImageDecodeError:
        raise
    except OSError as exc:
        text = str(exc)
        reason = "truncated" if "truncated" in text or "broken data stream" in text else "corrupt"
        raise ImageDecodeError(reason, f"image data is {reason}: {text}; the file may still be uploading") from exc
    except (ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError("corrupt", f"image data is corrupt: {exc}") from exc
    if arr.shape != (target_h, target_w, 3):  # pragma: no cover - guards a PIL behaviour change
        raise ImageDecodeError("corrupt", f"decoded to shape {arr.shape}, expected {(target_h, target_w, 3)}")
    return arr


def encode_jpeg(array: np.ndarray, quality: int = 85, max_bytes: int | None = None) -> bytes:
    """Encode an HxWx3 uint8 array as JPEG, lowering quality (then size) until under ``max_bytes``."""
    img = Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8), "RGB")
    while True:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality, optimize=True)
        out = buf.getvalue()
        if max_bytes is None or len(out) <= max_bytes:
            return out
        if quality > 40:
            quality -= 15
        else:
            img = img.resize((max(1, img.width // 2), max(1, img.height // 2)), Image.Resampling.BILINEAR)
