"""Procedurally drawn leaves with disease-like lesions, for tests and the demo.

Each class is one condition (healthy, leaf spot, blight, mosaic, rust, yellowing, ...) drawn on a
leaf whose shape, colour, pose and surroundings vary at random, so that a model has to learn the
lesion pattern and not the nuisance factors (background, rotation, lighting, blur, scale).

Everything written is marked synthetic: class folders start with ``Synthetic_leaf___``, the folder
holds ``SYNTHETIC.txt`` and ``dataset.json`` with ``"synthetic": true``, and every JPEG carries a
comment saying so.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from shared.fsutil import atomic_write_bytes, atomic_write_text

logger = logging.getLogger(__name__)

SYNTHETIC_PREFIX = "Synthetic_leaf___"
SYNTHETIC_MARKER = "SYNTHETIC.txt"
JPEG_COMMENT = b"cropwatch synthetic leaf (procedurally drawn, not a photo)"

Rgb = tuple[int, int, int]


def _jitter(rng: random.Random, rgb: Rgb, amount: int) -> Rgb:
    r, g, b = (max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)
    return r, g, b


def _leaf_outline(rng: random.Random, cx: float, cy: float, length: float, angle: float) -> list[tuple[float, float]]:
    """A pointed, slightly asymmetric leaf blade around its midrib."""
    width = length * rng.uniform(0.35, 0.62)
    tip_sharpness = rng.uniform(0.6, 1.4)
    wobble = [rng.uniform(-0.04, 0.04) for _ in range(6)]
    points = []
    n = 72
    for i in range(n):
        t = 2 * math.pi * i / n
        along = math.cos(t) * length / 2
        frac = (math.cos(t) + 1) / 2
        # sin^p profile: wide at the middle, pointed at the tip and the stalk end
        half = width / 2 * abs(math.sin(t)) ** tip_sharpness * (0.75 + 0.5 * frac * (1 - frac))
        half *= 1 + sum(w * math.sin((k + 2) * t) for k, w in enumerate(wobble))
        across = half * (1 if math.sin(t) >= 0 else -1)
        points.append(_rotate(cx, cy, along, across, angle))
    return points


def _rotate(cx: float, cy: float, dx: float, dy: float, angle: float) -> tuple[float, float]:
    c, s = math.cos(angle), math.sin(angle)
    return (cx + dx * c - dy * s, cy + dx * s + dy * c)


def _background(rng: random.Random, size: int) -> Image.Image:
    kind = rng.choice(["soil", "grass", "paper", "bench", "sky"])
    base = {
        "soil": (110, 80, 55),
        "grass": (70, 110, 50),
        "paper": (215, 210, 200),
        "bench": (150, 150, 150),
        "sky": (150, 185, 220),
    }[kind]
    base = _jitter(rng, base, 30)
    gen = np.random.default_rng(rng.getrandbits(32))
    # Mostly luminance texture with a little colour, like soil or foliage out of focus.
    low = gen.normal(0, 1, (size // 8 + 1, size // 8 + 1, 1)) + 0.3 * gen.normal(
        0, 1, (size // 8 + 1, size // 8 + 1, 3)
    )
    noise = np.asarray(
        Image.fromarray(((low * 20) + 128).clip(0, 255).astype(np.uint8)).resize(
            (size, size), Image.Resampling.BILINEAR
        ),
        dtype=np.float32,
    )
    arr = np.asarray(base, dtype=np.float32)[None, None, :] + (noise - 128) * rng.uniform(0.3, 1.0)
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB")


# --- lesions: each draws on the leaf layer, inside the leaf mask ---------------------------------


def _spots(rng: random.Random, draw: ImageDraw.ImageDraw, inside: Callable[[], tuple[float, float]], scale: float):
    for _ in range(rng.randint(5, 14)):
        x, y = inside()
        r = scale * rng.uniform(0.02, 0.045)
        halo = r * rng.uniform(1.5, 2.0)
        draw.ellipse((x - halo, y - halo, x + halo, y + halo), fill=_jitter(rng, (185, 180, 60), 20))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=_jitter(rng, (70, 40, 25), 15))


def _blight(rng: random.Random, draw: ImageDraw.ImageDraw, inside: Callable[[], tuple[float, float]], scale: float):
    for _ in range(rng.randint(1, 3)):
        x, y = inside()
        r = scale * rng.uniform(0.09, 0.17)
        pts = [
            (x + r * rng.uniform(0.6, 1.3) * math.cos(a), y + r * rng.uniform(0.6, 1.3) * math.sin(a))
            for a in np.linspace(0, 2 * math.pi, 14, endpoint=False)
        ]
        draw.polygon(pts, fill=_jitter(rng, (95, 70, 40), 20))
        inner = [(x + (px - x) * 0.55, y + (py - y) * 0.55) for px, py in pts]
        draw.polygon(inner, fill=_jitter(rng, (55, 40, 30), 12))


def _mosaic(rng: random.Random, draw: ImageDraw.ImageDraw, inside: Callable[[], tuple[float, float]], scale: float):
    for _ in range(rng.randint(14, 26)):
        x, y = inside()
        r = scale * rng.uniform(0.03, 0.08)
        pale = rng.random() < 0.6
        colour = (170, 200, 90) if pale else (35, 85, 30)
        draw.ellipse((x - r, y - r * rng.uniform(0.5, 1.0), x + r, y + r), fill=_jitter(rng, colour, 15))


def _rust(rng: random.Random, draw: ImageDraw.ImageDraw, inside: Callable[[], tuple[float, float]], scale: float):
    for _ in range(rng.randint(25, 60)):
        x, y = inside()
        r = scale * rng.uniform(0.006, 0.014)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=_jitter(rng, (205, 110, 30), 25))


def _mildew(rng: random.Random, draw: ImageDraw.ImageDraw, inside: Callable[[], tuple[float, float]], scale: float):
    for _ in range(rng.randint(4, 9)):
        x, y = inside()
        r = scale * rng.uniform(0.04, 0.09)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=_jitter(rng, (225, 228, 215), 12))


def _scorch(rng: random.Random, draw: ImageDraw.ImageDraw, inside: Callable[[], tuple[float, float]], scale: float):
    for _ in range(rng.randint(10, 22)):
        x, y = inside()
        w, h = scale * rng.uniform(0.01, 0.03), scale * rng.uniform(0.03, 0.07)
        draw.rectangle((x - w, y - h, x + w, y + h), fill=_jitter(rng, (120, 30, 40), 18))


# name -> (lesion painter or None, leaf colour shift: yellowing turns the blade yellow)
CONDITIONS: dict[str, tuple[Callable | None, bool]] = {
    "healthy": (None, False),
    "Leaf_spot": (_spots, False),
    "Blight": (_blight, False),
    "Mosaic_virus": (_mosaic, False),
    "Rust": (_rust, False),
    "Yellowing": (None, True),
    "Powdery_mildew": (_mildew, False),
    "Leaf_scorch": (_scorch, False),
}
MAX_CLASSES = len(CONDITIONS)


def class_names(n: int) -> list[str]:
    if not 2 <= n <= MAX_CLASSES:
        raise ValueError(f"--classes must be between 2 and {MAX_CLASSES} (one per drawn condition), got {n}")
    return [SYNTHETIC_PREFIX + name for name in list(CONDITIONS)[:n]]


def draw_leaf(condition: str, rng: random.Random, size: int = 128) -> Image.Image:
    """One RGB image of a leaf with ``condition`` (a key of CONDITIONS)."""
    painter, yellow = CONDITIONS[condition]
    # Draw at 2x and downsample: cheap anti-aliasing of the polygon edges.
    big = size * 2
    img = _background(rng, big)
    scale = big * rng.uniform(0.6, 0.95)
    cx, cy = big / 2 + rng.uniform(-0.1, 0.1) * big, big / 2 + rng.uniform(-0.1, 0.1) * big
    angle = rng.uniform(0, 2 * math.pi)
    outline = _leaf_outline(rng, cx, cy, scale, angle)

    green = _jitter(rng, (60, 125, 45), 25)
    if yellow:
        green = _jitter(rng, (190, 180, 60), 20)
    leaf = Image.new("RGB", (big, big), green)
    mask = Image.new("L", (big, big), 0)
    ImageDraw.Draw(mask).polygon(outline, fill=255)
    draw = ImageDraw.Draw(leaf)

    vein = tuple(min(255, c + 45) for c in green)
    if yellow:
        vein = _jitter(rng, (80, 140, 50), 15)  # chlorosis spares the veins
    tip = _rotate(cx, cy, scale / 2, 0, angle)
    base = _rotate(cx, cy, -scale / 2, 0, angle)
    draw.line([base, tip], fill=vein, width=max(1, int(big * 0.012)))
    n_veins = rng.randint(4, 7)
    for i in range(1, n_veins + 1):
        along = -scale / 2 + scale * i / (n_veins + 1)
        for side in (-1, 1):
            start = _rotate(cx, cy, along, 0, angle)
            end = _rotate(cx, cy, along + scale * 0.12, side * scale * 0.2, angle)
            draw.line([start, end], fill=vein, width=max(1, int(big * 0.005)))

    def inside() -> tuple[float, float]:
        while True:
            along = rng.uniform(-0.4, 0.4) * scale
            across = rng.uniform(-0.16, 0.16) * scale
            x, y = _rotate(cx, cy, along, across, angle)
            # An 'L' image's pixel is one int (PIL types getpixel for every mode).
            if 0 <= x < big and 0 <= y < big and cast(int, mask.getpixel((int(x), int(y)))) > 0:
                return x, y

    if painter is not None:
        painter(rng, draw, inside, scale)
    shade = Image.linear_gradient("L").rotate(rng.uniform(0, 360)).resize((big, big))
    leaf = Image.composite(ImageEnhance.Brightness(leaf).enhance(0.8), leaf, shade)
    img.paste(leaf, (0, 0), mask)

    # Nuisance: lighting, blur, sensor noise; the lesion pattern stays the only signal.
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.65, 1.3))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.75, 1.2))
    img = img.resize((size, size), Image.Resampling.LANCZOS)
    if rng.random() < 0.35:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0, rng.uniform(0.5, 4), (size, size, 3))
    return Image.fromarray((np.asarray(img, dtype=np.float32) + noise).clip(0, 255).astype(np.uint8), "RGB")


def generate(out: Path, classes: int, per_class: int, size: int = 128, seed: int = 0, progress: bool = True) -> dict:
    """Write ``per_class`` JPEGs for each of ``classes`` conditions into class folders under ``out``."""
    if per_class < 1:
        raise ValueError(f"--per-class must be at least 1, got {per_class}")
    if size < 16:
        raise ValueError(f"--size must be at least 16 pixels, got {size}")
    names = class_names(classes)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    total = classes * per_class
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="synth-leaves", unit="img")
    for class_index, name in enumerate(names):
        folder = out / name
        folder.mkdir(exist_ok=True)
        condition = name[len(SYNTHETIC_PREFIX) :]
        for i in range(per_class):
            rng = random.Random(f"{seed}:{class_index}:{i}")
            img = draw_leaf(condition, rng, size)
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=rng.randint(80, 95), comment=JPEG_COMMENT)
            rel = f"{name}/synthetic_{class_index:02d}_{i:05d}.jpg"
            atomic_write_bytes(out / rel, buf.getvalue())
            rows.append((rel, name))
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()
    info = {
        "synthetic": True,
        "generator": "cropwatch data synth-leaves",
        "classes": names,
        "per_class": per_class,
        "size": size,
        "seed": seed,
    }
    atomic_write_text(out / "dataset.json", json.dumps(info, indent=2) + "\n")
    atomic_write_text(
        out / SYNTHETIC_MARKER,
        "Synthetic data: procedurally drawn leaves made by 'cropwatch data synth-leaves'.\n"
        "Not photographs; for tests and demos only. Models trained on it are marked synthetic.\n",
    )
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["path", "label"])
    writer.writerows(rows)
    atomic_write_text(out / "labels.csv", text.getvalue())
    logger.info("wrote %d synthetic images in %d classes to %s", total, classes, out)
    return info


def main(argv: list[str], prog: str) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Draw synthetic leaf photos with disease-like lesions into class folders (marked synthetic).",
    )
    parser.add_argument("out", type=Path, help="output folder (class folders are created inside)")
    parser.add_argument("--classes", type=int, default=4, help=f"number of conditions, 2..{MAX_CLASSES} (default 4)")
    parser.add_argument("--per-class", type=int, default=50, help="images per class (default 50)")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        info = generate(args.out, args.classes, args.per_class, args.size, args.seed, progress=not args.quiet)
    except ValueError as exc:
        print(f"{prog}: {exc}")
        return 2
    print(f"wrote {len(info['classes']) * args.per_class} synthetic images to {args.out}: {', '.join(info['classes'])}")
    return 0
