"""Leaf-disease model: synthetic data, datasets, timm models, training, evaluation, ONNX export."""

from pathlib import Path

# 108 real PlantVillage photos, 9 classes (CC BY-SA 3.0; attribution in its README.md): the demo's
# training set and its cameras' photos.
LEAF_SAMPLE = Path(__file__).resolve().parent / "leaf_sample"
