"""Synthetic leaf pictures (numpy + PIL) for the simulated camera: demos and tests without a camera."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CONDITIONS = ("healthy", "early_blight", "late_blight")


def draw_leaf(width: int, height: int, condition: str = "healthy", seed: int = 0) -> np.ndarray:
    """An HxWx3 uint8 RGB picture of one leaf on soil; diseased leaves carry spots or blotches."""
    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {', '.join(CONDITIONS)}")
    rng = np.random.default_rng(seed)
    soil = np.array([92, 70, 48], dtype=np.float32) + rng.normal(0, 6, size=3)
    noise = rng.normal(0, 10, size=(height, width, 1)).astype(np.float32)
    background = np.clip(soil + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(background, "RGB")
    draw = ImageDraw.Draw(img)

    cx, cy = width / 2 + rng.uniform(-0.05, 0.05) * width, height / 2 + rng.uniform(-0.05, 0.05) * height
    length, breadth = 0.95 * min(width, height), 0.55 * min(width, height)
    angle = rng.uniform(0, math.pi)
    ca, sa = math.cos(angle), math.sin(angle)

    def at(u: float, v: float) -> tuple[float, float]:
        return (cx + u * ca - v * sa, cy + u * sa + v * ca)

    outline = []
    for t in np.linspace(0, 2 * math.pi, 72, endpoint=False):
        u = length / 2 * math.cos(t)
        v = breadth / 2 * math.sin(t) * (1 - 0.25 * math.cos(t))
        outline.append(at(u, v))
    green = (int(rng.integers(40, 60)), int(rng.integers(150, 180)), int(rng.integers(40, 60)))
    if condition == "late_blight":
        green = (int(rng.integers(110, 140)), int(rng.integers(130, 150)), int(rng.integers(40, 60)))
    draw.polygon(outline, fill=green)
    vein = tuple(min(255, c + 40) for c in green)
    draw.line([at(-length / 2, 0), at(length / 2, 0)], fill=vein, width=max(1, width // 200))
    for k in range(1, 6):
        u = -length / 2 + k * length / 6
        for side in (-1, 1):
            draw.line([at(u, 0), at(u + length / 10, side * breadth / 3)], fill=vein, width=max(1, width // 300))

    if condition == "early_blight":
        for _ in range(int(rng.integers(25, 40))):
            u, v = rng.uniform(-0.35, 0.35) * length, rng.uniform(-0.3, 0.3) * breadth
            r = rng.uniform(0.04, 0.07) * min(width, height)
            x, y = at(u, v)
            for ring, colour in ((1.0, (120, 80, 30)), (0.6, (70, 45, 20)), (0.3, (120, 80, 30))):
                draw.ellipse([x - r * ring, y - r * ring, x + r * ring, y + r * ring], fill=colour)
    elif condition == "late_blight":
        for _ in range(int(rng.integers(3, 6))):
            u, v = rng.uniform(-0.3, 0.3) * length, rng.uniform(-0.25, 0.25) * breadth
            r = rng.uniform(0.06, 0.12) * min(width, height)
            x, y = at(u, v)
            draw.ellipse([x - r, y - r * 0.8, x + r, y + r * 0.8], fill=(55, 50, 35))
    img = img.filter(ImageFilter.GaussianBlur(radius=max(0.5, width / 640)))
    return np.asarray(img, dtype=np.uint8)
