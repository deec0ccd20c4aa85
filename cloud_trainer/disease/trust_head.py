"""The trust head: familiarity and the leaf gate, computed on the backbone's pooled features.

Measured on the team data (docs/disease-model.md), scores read from the logits (energy, max-logit,
max-probability) of a lab-trained model leave 58-88% of unknown-crop photos and 54-75% of
not-a-leaf frames answered at 95% validation coverage; the cosine similarity of the pooled features
to the nearest class prototype (the mean training feature of each class) flags them nearly all.
So the head exports two extra outputs:

- ``familiarity``: max over prototypes (one per class and domain) of cos(feature, prototype); the abstention score
  (``prototype_cosine``), thresholded on validation like any other score;
- ``leaf``: P(the frame shows a leaf), a logistic regression on the normalised features, fitted on
  the training images (leaves, lab and field) against generated frames and half of scikit-image's
  photographs (cloud_trainer/disease/nonleaf.py); the other half is the held-out evaluation.

Both are buffers of one small module, part of the exported graph: the agent only reads outputs.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from shared.image import decode_image

from . import dataset as ds
from .models import DiseaseNet

logger = logging.getLogger(__name__)

# Training images per class used for the prototypes and the gate (a cap for big datasets).
MAX_PER_CLASS = 200


class TrustHead(nn.Module):
    prototypes: torch.Tensor
    gate_w: torch.Tensor
    gate_b: torch.Tensor

    def __init__(self, prototypes: torch.Tensor, gate_w: torch.Tensor, gate_b: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("prototypes", prototypes.float())
        self.register_buffer("gate_w", gate_w.float())
        self.register_buffer("gate_b", gate_b.float().reshape(()))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = nn.functional.normalize(features.float(), dim=1)
        familiarity = (f @ self.prototypes.T).max(dim=1, keepdim=True).values
        leaf = torch.sigmoid(f @ self.gate_w + self.gate_b).unsqueeze(1)
        return familiarity, leaf

    def state(self) -> dict[str, torch.Tensor]:
        return {"prototypes": self.prototypes, "gate_w": self.gate_w, "gate_b": self.gate_b}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> TrustHead:
        return cls(state["prototypes"], state["gate_w"], state["gate_b"])


def pooled_features(net: DiseaseNet, pixels_nhwc: torch.Tensor) -> torch.Tensor:
    """The backbone's pooled features (before the classifier) of uint8 NHWC images."""
    x = pixels_nhwc.permute(0, 3, 1, 2).float() * net.pixel_scale + net.pixel_shift
    bb = net.backbone
    return bb.forward_head(bb.forward_features(x), pre_logits=True)  # type: ignore[operator]


@torch.no_grad()
def features_of(net: DiseaseNet, images: np.ndarray, batch: int = 32) -> np.ndarray:
    net = net.eval()
    out = [pooled_features(net, torch.from_numpy(images[i : i + batch])).numpy() for i in range(0, len(images), batch)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fit_gate(pos: np.ndarray, neg: np.ndarray, l2: float = 1e-3, steps: int = 200) -> tuple[np.ndarray, float]:
    """Logistic regression leaf vs not-a-leaf on normalised features, classes weighted equally."""
    x = torch.from_numpy(_normalise(np.concatenate([pos, neg])).astype(np.float32))
    y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))])
    weight = torch.where(y > 0, 0.5 / len(pos), 0.5 / len(neg))
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logit = x @ w * 10.0 + b  # x10: normalised features are small; keeps the optimum reachable
        loss = (weight * nn.functional.binary_cross_entropy_with_logits(logit, y, reduction="none")).sum()
        loss = loss + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return (w.detach() * 10.0).numpy(), float(b.detach())


def build_trust_head(net: DiseaseNet, train: list[ds.Sample], classes: list[str], size: int) -> TrustHead:
    """Prototypes from the training split, the leaf gate against the ``fit`` half of the not-a-leaf frames."""
    from .nonleaf import generated_frames, skimage_frames

    rng = np.random.default_rng(0)
    chosen: list[ds.Sample] = []
    for c in classes:
        of_class = [s for s in train if s.label == c]
        rng.shuffle(of_class)
        chosen += of_class[:MAX_PER_CLASS]
    feats = features_of(net, np.stack([ds.eval_array(s, size) for s in chosen]))
    # One prototype per class and domain: the mean of a class's lab and field photos lies between
    # the two and is near neither, which left few-shot field photos unanswered.
    groups = sorted({(s.label, s.domain) for s in chosen})
    keys = [(s.label, s.domain) for s in chosen]
    protos = np.stack([_normalise(feats[[k == g for k in keys]]).mean(axis=0) for g in groups])
    try:
        photos = list(skimage_frames("fit"))
    except ModuleNotFoundError:
        logger.warning("scikit-image is not installed: the leaf gate learns from generated frames only")
        photos = []
    frames = [*photos, *generated_frames(36, seed=7)]
    neg = features_of(net, np.stack([decode_image(b, size, "center_crop") for _, b in frames]))
    w, b = fit_gate(feats, neg)
    logger.info("trust head: %d prototypes from %d training images; leaf gate on %d not-a-leaf frames",
                len(groups), len(chosen), len(neg))  # fmt: skip
    return TrustHead(torch.from_numpy(_normalise(protos)), torch.from_numpy(w), torch.tensor(b))
