"""The Cropwatch cloud trainer: datasets, models, training, ONNX export, registry, publishing."""
