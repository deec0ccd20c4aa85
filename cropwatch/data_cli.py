"""``cropwatch data SUBCOMMAND``: dataset builders of the trainer and the monitor's label export.

In the router's package because it names two components (each entry is loaded only when run).
"""

from __future__ import annotations

from cloud_trainer.dispatch import dispatch

# subcommand -> (module:function, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "synth-leaves": ("cloud_trainer.disease.synth:main", "draw synthetic leaf photos with lesions into class folders"),
    "synth-yield": ("cloud_trainer.yield_model.data_cmds:synth_yield_main", "synthetic season cube with a known yield"),
    "iowa-cube": ("cloud_trainer.yield_model.data_cmds:iowa_cube_main", "Iowa county-season cube from the team data"),
    "import": (
        "cloud_trainer.datasets.cli:import_main",
        "import PlantVillage, PlantDoc, iBean, Cassava or your photos (see docs/datasets.md)",
    ),
    "merge": ("cloud_trainer.datasets.cli:merge_main", "merge imported datasets into one training set"),
    "export-labels": (
        "farm_monitor.labels_cli:export_labels_main",
        "monitor labels: class folders + CSV",
    ),
}


def main(argv: list[str], prog: str) -> int:
    return dispatch(SUBCOMMANDS, argv, prog)
