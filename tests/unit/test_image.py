from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from shared.errors import ImageDecodeError
from shared.image import decode_image, encode_jpeg, image_size


def encode(arr: np.ndarray, fmt: str = "JPEG", **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def gradient(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), np.full_like(x, 90)], -1).astype(np.uint8)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_decodes_to_rgb_uint8_at_model_size(fmt: str) -> None:
    out = decode_image(encode(gradient(300, 400), fmt), 224)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8


def test_rectangular_target() -> None:
    assert decode_image(encode(gradient(100, 100), "PNG"), (32, 48)).shape == (32, 48, 3)


def test_center_crop_keeps_the_middle_and_stretch_keeps_everything() -> None:
    arr = np.zeros((100, 300, 3), np.uint8)
    arr[:, :100] = (255, 0, 0)  # red left third
    arr[:, 100:200] = (0, 255, 0)  # green middle
    arr[:, 200:] = (0, 0, 255)
    data = encode(arr, "PNG")
    crop = decode_image(data, 50, resize="center_crop")
    assert (crop[:, 5:45, 1] > 200).all() and (crop[:, 5:45, 0] < 50).all()
    stretch = decode_image(data, 60, resize="stretch")
    assert stretch[30, 2, 0] > 200 and stretch[30, 30, 1] > 200 and stretch[30, 57, 2] > 200


def test_large_jpeg_uses_reduced_decoding_but_gives_the_same_picture() -> None:
    big = np.kron(gradient(108, 192), np.ones((10, 10, 1), np.uint8))  # 1080x1920
    data = encode(big, quality=95)
    fast = decode_image(data, 224).astype(int)
    full = np.asarray(
        Image.open(io.BytesIO(data))
        .convert("RGB")
        .resize((224, 224), Image.Resampling.BILINEAR, box=(420, 0, 1500, 1080))
    ).astype(int)
    assert np.abs(fast - full).mean() < 3.0


def test_grayscale_palette_and_alpha_become_rgb() -> None:
    gray = encode(gradient(40, 40)[..., 0], "PNG")
    assert decode_image(gray, 16).shape == (16, 16, 3)
    rgba = np.dstack([gradient(40, 40), np.zeros((40, 40), np.uint8)])
    out = decode_image(encode(rgba, "PNG"), 16)
    assert (out > 250).all()  # fully transparent pixels are composited on white
    pal = Image.fromarray(gradient(40, 40)).convert("P")
    buf = io.BytesIO()
    pal.save(buf, format="PNG")
    assert decode_image(buf.getvalue(), 16).shape == (16, 16, 3)


def test_exif_orientation_is_applied() -> None:
    arr = np.zeros((20, 40, 3), np.uint8)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    assert image_size(buf.getvalue()) == (40, 20)
    assert decode_image(buf.getvalue(), (40, 20), resize="stretch").shape == (40, 20, 3)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"hello world, not an image", "not_an_image"),
        (b"GIF89a" + b"\0" * 100, "not_an_image"),
        (b"\xff\xd8\xff\xe0" + b"\0" * 50, "corrupt"),
    ],
    ids=["empty", "text", "gif", "jpeg-header-only"],
)
def test_bad_inputs_are_rejected_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ImageDecodeError) as err:
        decode_image(data, 32)
    assert err.value.reason == reason


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_are_rejected(fmt: str) -> None:
    rng = np.random.default_rng(0)
    data = encode(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8), fmt)
    with pytest.raises(ImageDecodeError) as err:
        decode_image(data[: len(data) // 2], 32)
    assert err.value.reason in ("truncated", "corrupt")


def test_decompression_bomb_is_rejected_before_decoding() -> None:
    img = Image.new("L", (20000, 20000))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    data = buf.getvalue()
    assert len(data) < 1_000_000  # tiny on disk, 400 MP in memory
    with pytest.raises(ImageDecodeError) as err:
        decode_image(data, 32)
    assert err.value.reason == "too_large"
    with pytest.raises(ImageDecodeError):
        decode_image(encode(gradient(100, 100), "PNG"), 32, max_pixels=5000)


def test_encode_jpeg_respects_a_byte_budget() -> None:
    noisy = np.random.default_rng(1).integers(0, 255, (1080, 1920, 3), dtype=np.uint8)
    out = encode_jpeg(noisy, max_bytes=256 * 1024)
    assert len(out) <= 256 * 1024 and out[:3] == b"\xff\xd8\xff"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000))
def test_random_bytes_raise_only_image_decode_error(data: bytes) -> None:
    with pytest.raises(ImageDecodeError):
        decode_image(data, 16)


@settings(max_examples=100, deadline=None)
@given(cut=st.integers(min_value=0, max_value=2000), flip=st.integers(min_value=0, max_value=2000))
def test_damaged_jpegs_decode_or_raise_image_decode_error(cut: int, flip: int) -> None:
    data = bytearray(encode(gradient(48, 64), quality=80))
    if flip < len(data):
        data[flip] ^= 0xFF
    data = data[: max(1, len(data) - cut)]
    try:
        out = decode_image(bytes(data), 16)
    except ImageDecodeError:
        return
    assert out.shape == (16, 16, 3)
