"""Every architecture of the registry: build, forward, export, onnxruntime == torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from cloud_trainer.disease.export import (
    INPUT_NAME,
    OUTPUT_NAME,
    ExportError,
    build_probability_model,
    check_parity,
    export_onnx,
    ort_session,
    run_ort,
)
from cloud_trainer.disease.models import MODEL_REGISTRY

torch.set_num_threads(1)


@pytest.mark.parametrize("arch", sorted(MODEL_REGISTRY))
def test_export_matches_torch(arch: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_probability_model(arch, num_classes=4, temperature=1.7)
    path = export_onnx(model, tmp_path / f"{arch}.onnx", image_size=32)
    graph = onnx.load(str(path))
    (inp,) = graph.graph.input
    assert inp.name == INPUT_NAME
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [32, 32, 3]
    assert graph.graph.output[0].name == OUTPUT_NAME
    images = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    assert check_parity(model, path, images) <= 1e-4
    probs = run_ort(ort_session(path), images)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_parity_failure_is_loud(tmp_path: Path) -> None:
    model = build_probability_model("resnet18", num_classes=3)
    path = export_onnx(model, tmp_path / "m.onnx", image_size=32)
    with torch.no_grad():
        model.net.backbone.fc.bias[0] += 5.0  # torch side changed after export: they must disagree
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(ExportError, match="disagree"):
        check_parity(model, path, images)
