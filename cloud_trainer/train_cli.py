"""``cropwatch train TASK``: dispatch to the trainer of each model family (see :mod:`.dispatch`)."""

from __future__ import annotations

from .dispatch import dispatch

# task -> (module:function, one-line help)
TASKS: dict[str, tuple[str, str]] = {
    "disease": ("cloud_trainer.disease.train:cli", "leaf-disease image classifier (timm backbone)"),
    "yield": ("cloud_trainer.yield_model.train:main_cli", "season yield forecaster from a season cube"),
}


def main(argv: list[str], prog: str) -> int:
    return dispatch(TASKS, argv, prog, what="task")
