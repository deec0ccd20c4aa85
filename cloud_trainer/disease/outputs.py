"""The exported graph's outputs and the manifest's abstention block that points at them."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from shared.manifest import Abstention, TensorSpec

from .models import DiseaseNet
from .trust_head import TrustHead, pooled_features

OUTPUT_NAME = "probabilities"
LOGITS_NAME = "logits"
FAMILIARITY_NAME = "familiarity"
LEAF_NAME = "leaf"
OUTPUT_NAMES = (OUTPUT_NAME, LOGITS_NAME, FAMILIARITY_NAME, LEAF_NAME)


class ProbabilityModel(nn.Module):
    """uint8 NHWC in, calibrated probabilities out: the whole contract of the ONNX file.

    With a trust head (trust_head.py) the exported graph also has ``familiarity`` and ``leaf``.
    """

    inv_temperature: torch.Tensor

    def __init__(self, net: DiseaseNet, temperature: float, trust: TrustHead | None = None) -> None:
        super().__init__()
        self.net = net
        self.trust = trust
        self.register_buffer("inv_temperature", torch.tensor(1.0 / temperature, dtype=torch.float32))

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image.permute(0, 3, 1, 2).to(torch.float32))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(image) * self.inv_temperature, dim=1)

    def all_outputs(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """probabilities, logits (+ familiarity, leaf with a trust head), in OUTPUT_NAMES order."""
        if self.trust is None:
            z = self.logits(image)
            return torch.softmax(z * self.inv_temperature, dim=1), z
        feats = pooled_features(self.net, image)
        z = self.net.backbone.get_classifier()(feats)  # type: ignore[operator]
        familiarity, leaf = self.trust(feats)
        return torch.softmax(z * self.inv_temperature, dim=1), z, familiarity, leaf


class ExportModel(nn.Module):
    """What is exported: every output of :meth:`ProbabilityModel.all_outputs`."""

    def __init__(self, inner: ProbabilityModel) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.inner.all_outputs(image)


def output_specs(n_classes: int, trust: bool) -> list[TensorSpec]:
    specs = [
        TensorSpec(
            name=OUTPUT_NAME,
            dtype="float32",
            shape=["batch", n_classes],
            description="calibrated class probabilities, in the order of labels",
        ),
        TensorSpec(
            name=LOGITS_NAME,
            dtype="float32",
            shape=["batch", n_classes],
            description="raw logits (before the temperature), for the abstention score",
        ),
    ]
    if trust:
        specs += [
            TensorSpec(name=FAMILIARITY_NAME, dtype="float32", shape=["batch", 1],
                       description="cosine similarity of the image's features to the nearest class prototype"),
            TensorSpec(name=LEAF_NAME, dtype="float32", shape=["batch", 1],
                       description="probability that the frame shows a leaf (the not-a-leaf gate)"),
        ]  # fmt: skip
    return specs


def abstention_of(info: dict[str, Any], trust: bool) -> Abstention | None:
    """The run's abstention rule (chosen on validation by finish), pointed at the exported outputs."""
    rule = info.get("abstention")
    if not rule:
        return None
    rule = {k: v for k, v in rule.items() if k in Abstention.model_fields}
    source = {"prototype_cosine": FAMILIARITY_NAME, "max_prob": None}.get(rule["score"], LOGITS_NAME)
    leaf = {"leaf_output": LEAF_NAME} if trust and "leaf_threshold" in rule else {}
    return Abstention.model_validate({**rule, "score_output": source, **leaf})
