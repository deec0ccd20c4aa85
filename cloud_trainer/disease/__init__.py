"""Leaf-disease model: synthetic data, datasets, timm models, training, evaluation, ONNX export."""
