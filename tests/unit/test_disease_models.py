from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cloud_trainer.disease import models

torch.set_num_threads(1)


@pytest.mark.parametrize("arch", sorted(models.MODEL_REGISTRY))
def test_registry_builds_and_runs_on_pixels(arch: str) -> None:
    net, report = models.build_model(arch, num_classes=3, pretrained="none")
    net.eval()
    with torch.no_grad():
        out = net(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    assert report.loaded == 0


def test_offline_lite0_weights_map_by_position_and_report_the_head() -> None:
    net, report = models.build_model("tf_efficientnet_lite0", num_classes=5, pretrained="default")
    assert report.total_target == 296
    assert report.loaded == 294
    assert report.missing == ["classifier.weight", "classifier.bias"]
    assert any("_fc.weight->classifier.weight" in s for s in report.skipped)
    # Spot check that a tensor landed in its timm slot unchanged.
    src = torch.load(models.offline_lite0_path(), map_location="cpu", weights_only=True)
    assert torch.equal(net.backbone.conv_stem.weight, src["_conv_stem.weight"])
    assert torch.equal(net.backbone.bn2.running_var, src["_bn1.running_var"])
    assert "loaded 294/296" in report.summary()


def test_offline_lite0_refused_for_another_arch() -> None:
    with pytest.raises(ValueError, match="tf_efficientnet_lite0 only"):
        models.build_model("resnet18", 3, pretrained=models.OFFLINE_LITE0)


def test_local_checkpoint_loads_by_name_with_shape_checks(tmp_path: Path) -> None:
    donor, _ = models.build_model("resnet18", num_classes=7, pretrained="none")
    path = tmp_path / "ckpt.pt"
    torch.save({"model": donor.state_dict()}, path)
    net, report = models.build_model("resnet18", num_classes=3, pretrained=str(path))
    assert report.loaded == report.total_target - 2
    assert any(s.startswith("fc.weight: shape (7, 512)") for s in report.skipped)
    assert torch.equal(net.backbone.conv1.weight, donor.backbone.conv1.weight)


def test_checkpoint_of_another_arch_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"something.else": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="no tensor matched"):
        models.build_model("resnet18", 3, pretrained=str(path))


def test_normalisation_is_inside_the_network() -> None:
    net, _ = models.build_model("resnet18", 2, "none")
    spec = models.MODEL_REGISTRY["resnet18"]
    pixels = torch.full((1, 3, 4, 4), 255.0)
    x = pixels * net.pixel_scale + net.pixel_shift
    expected = (1.0 - torch.tensor(spec.mean)) / torch.tensor(spec.std)
    assert torch.allclose(x[0, :, 0, 0], expected, atol=1e-6)


def test_unknown_arch_names_the_choices() -> None:
    with pytest.raises(ValueError, match="resnet18"):
        models.arch_spec("vgg11")


@pytest.mark.parametrize(("scale", "frozen"), [(0.0, True), (0.3, False)])
def test_backbone_lr_scale_zero_freezes_the_backbone(scale: float, frozen: bool) -> None:
    import argparse

    from cloud_trainer.disease.run_setup import build_optimizer

    net, _ = models.build_model("tf_efficientnet_lite0", 3, "none", 0.0)
    args = argparse.Namespace(
        lr=1e-2, batch_size=16, backbone_lr_scale=scale, init=None, weight_decay=0.0, epochs=2, warmup_epochs=0
    )
    optimizer, _, chosen = build_optimizer(net, args, 1, models.LoadReport(source="none"))
    head = {id(p) for p in net.backbone.get_classifier().parameters()}
    body = [p for p in net.parameters() if id(p) not in head]
    assert chosen["backbone_frozen"] is frozen
    assert all(p.requires_grad is not frozen for p in body)
    assert len(optimizer.param_groups) == (1 if frozen else 2)
    # A step moves only what learns.
    before = [p.detach().clone() for p in body[:3]]
    net(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)).sum().backward()
    optimizer.step()
    assert all(torch.equal(a, p) for a, p in zip(before, body[:3], strict=True)) is frozen
