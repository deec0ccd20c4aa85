"""The field-conditions recipe: make lab photos look like field photos, and sample fairly.

Each element can be switched off (``cropwatch train disease --no-...``; docs/disease-model.md has
the ablation):

- ``background``: a lab photo's leaf is cut from its plain background (the border colour, by
  colour distance) and pasted on a generated natural-looking texture: soil speckle, grass-like
  strokes, leaf litter; blurred like an out-of-focus background. Generated, not photographs, so
  nothing of the held-out not-a-leaf photographs (skimage) leaks into training;
- ``shadows``: a soft dark band or blob across the frame (a hand, a branch, the phone);
- ``perspective``: the photo taken at an angle;
- ``jpeg``: phone JPEG artefacts (quality 30-85);
- class-balanced sampling, with field photos (the dataset's per-image ``domain``) drawn at
  ``field_share`` of each epoch where the dataset has them: :class:`BalancedSampler`.

Random resized crops that keep context, light and colour shifts and blur are in the base
augmentation (dataset.py) and stay on.
"""

from __future__ import annotations

import argparse
import io
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch.utils.data import DistributedSampler

from . import dataset as ds


@dataclass(frozen=True)
class FieldRecipe:
    background: bool = True
    shadows: bool = True
    perspective: bool = True
    jpeg: bool = True
    balanced: bool = True
    field_share: float = 0.3

    @property
    def any_image_op(self) -> bool:
        return self.background or self.shadows or self.perspective or self.jpeg


def texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A natural-looking background: soil, grass or leaf litter, generated."""
    kind = rng.integers(3)
    if kind == 0:  # soil
        base = rng.uniform([70, 45, 25], [150, 110, 70])
    elif kind == 1:  # grass
        base = rng.uniform([40, 80, 20], [100, 150, 60])
    else:  # litter
        base = rng.uniform([90, 70, 30], [170, 140, 80])
    cell = int(rng.integers(3, 9))
    coarse = rng.normal(0, 30, (h // cell + 1, w // cell + 1, 1))
    grain = np.kron(coarse, np.ones((cell, cell, 1)))[:h, :w]
    img = np.clip(base + grain + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)
    pil = Image.fromarray(img)
    if kind == 1:  # blades: short bright strokes
        from PIL import ImageDraw

        d = ImageDraw.Draw(pil)
        for _ in range(int(h * w / 400)):
            x, y = int(rng.integers(w)), int(rng.integers(h))
            ang = rng.uniform(-0.6, 0.6) - math.pi / 2
            ln = rng.uniform(5, 20)
            col = tuple(int(c) for c in np.clip(base + rng.normal(20, 25, 3), 0, 255))
            d.line([(x, y), (x + ln * math.cos(ang), y + ln * math.sin(ang))], fill=col, width=1)
    return np.asarray(pil.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.5)))))


def leaf_mask(img: np.ndarray) -> np.ndarray:
    """Float mask of the leaf: pixels far in colour from the border's median (a lab photo's backdrop)."""
    border = np.concatenate([img[:4].reshape(-1, 3), img[-4:].reshape(-1, 3), img[:, :4].reshape(-1, 3),
                             img[:, -4:].reshape(-1, 3)])  # fmt: skip
    bg = np.median(border, axis=0)
    dist = np.linalg.norm(img.astype(np.float32) - bg, axis=2)
    mask = Image.fromarray((dist > 45).astype(np.uint8) * 255).filter(ImageFilter.MedianFilter(5))
    return np.asarray(mask.filter(ImageFilter.GaussianBlur(1.5)), dtype=np.float32)[..., None] / 255.0


def paste_on_background(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    mask = leaf_mask(img)
    share = float(mask.mean())
    if share < 0.05 or share > 0.95:  # no clear backdrop (already a field photo): leave it
        return img
    bg = texture(rng, img.shape[0], img.shape[1]).astype(np.float32)
    return (img * mask + bg * (1 - mask)).astype(np.uint8)


def shadow(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ang = rng.uniform(0, math.pi)
    off = rng.uniform(-0.3, 0.3) * max(h, w)
    d = (xx - w / 2) * math.cos(ang) + (yy - h / 2) * math.sin(ang) - off
    width = rng.uniform(0.1, 0.4) * max(h, w)
    band = 1 / (1 + np.exp((np.abs(d) - width / 2) / (0.05 * max(h, w))))
    dark = 1 - rng.uniform(0.3, 0.6) * band
    return np.clip(img * dark[..., None], 0, 255).astype(np.uint8)


def jpeg(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=int(rng.integers(30, 86)))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


class FieldAugment:
    """The recipe's image operations; ``before`` on the decoded photo, ``after`` on the augmented tensor."""

    def __init__(self, recipe: FieldRecipe) -> None:
        from torchvision.transforms import v2

        self.recipe = recipe
        self.perspective = v2.RandomPerspective(distortion_scale=0.35, p=0.4, fill=96)

    @staticmethod
    def _rng() -> np.random.Generator:
        # Drawn from torch's generator, which training seeds per (seed, epoch): a resumed run
        # augments exactly as an uninterrupted one.
        return np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,))))

    def before(self, arr: np.ndarray, domain: str) -> np.ndarray:
        rng = self._rng()
        if self.recipe.background and domain != "field" and rng.random() < 0.6:
            arr = paste_on_background(arr, rng)
        return arr

    def after(self, img: torch.Tensor) -> torch.Tensor:
        if self.recipe.perspective:
            img = self.perspective(img)
        if not (self.recipe.shadows or self.recipe.jpeg):
            return img
        arr, rng = img.permute(1, 2, 0).numpy(), self._rng()
        if self.recipe.shadows and rng.random() < 0.35:
            arr = shadow(arr, rng)
        if self.recipe.jpeg and rng.random() < 0.5:
            arr = jpeg(np.ascontiguousarray(arr), rng)
        return torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1)


class BalancedSampler(DistributedSampler[int]):
    """Every class equally often per epoch; field photos at ``field_share`` where the data has them.

    Drawn with replacement from weights, seeded by (seed, epoch) like the plain sampler, so a resumed
    run sees the same epochs; each rank takes its stride of the draw.
    """

    def __init__(self, samples: list[ds.Sample], recipe: FieldRecipe, num_replicas: int, rank: int, seed: int):
        super().__init__(range(len(samples)), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)  # type: ignore[arg-type]
        labels = Counter(s.label for s in samples)
        w = np.array([1.0 / labels[s.label] for s in samples])
        field = np.array([s.domain == "field" for s in samples])
        if recipe.field_share > 0 and field.any() and (~field).any():
            w[field] *= recipe.field_share / w[field].sum()
            w[~field] *= (1 - recipe.field_share) / w[~field].sum()
        self.weights = torch.from_numpy(w / w.sum())

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        idx = torch.multinomial(self.weights, self.total_size, replacement=True, generator=g).tolist()
        return iter(idx[self.rank : self.total_size : self.num_replicas])


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("field-conditions recipe (docs/disease-model.md); each element on by default")
    g.add_argument("--no-field-background", action="store_true", help="do not paste lab leaves on textures")
    g.add_argument("--no-shadows", action="store_true", help="no cast shadows")
    g.add_argument("--no-perspective", action="store_true", help="no perspective warp")
    g.add_argument("--no-jpeg", action="store_true", help="no JPEG re-encoding artefacts")
    g.add_argument("--no-balanced", action="store_true", help="plain shuffle instead of class-balanced sampling")
    g.add_argument(
        "--field-share",
        type=float,
        default=0.3,
        help="share of field photos per epoch where the data has some (0: off)",
    )


def recipe_of(args: argparse.Namespace) -> FieldRecipe:
    return FieldRecipe(
        background=not args.no_field_background,
        shadows=not args.no_shadows,
        perspective=not args.no_perspective,
        jpeg=not args.no_jpeg,
        balanced=not args.no_balanced,
        field_share=max(0.0, min(0.9, args.field_share)),
    )
