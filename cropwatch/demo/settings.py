"""The demo farm's fixed choices: names, sizes and timings every part of the demo agrees on."""

from __future__ import annotations

FARM_ID = "demo-farm"
DEVICE_IDS = ("gw-north", "gw-south", "gw-orchard", "gw-east", "gw-west")
FIELDS = ("north-field", "south-field", "orchard", "east-field", "west-field")
MODEL_NAME = "leaf-disease"
# 0.2: trained on the shipped real photos (0.1 was synthetic leaves); a new version, so a registry
# holding the old one takes the new one beside it.
MODEL_VERSION = "0.2.0-demo"
# Of the 12 shipped photos per class: held out (test split, the cameras' photos), validation, the
# rest (7) training.
HELD_OUT_PER_CLASS, VAL_PER_CLASS, IMAGE_SIZE, EPOCHS = 3, 2, 128, 8
# The ImageNet backbone frozen (and its BatchNorm statistics), only the classifier learns, at a head's
# learning rate: a third of the CPU work of fine-tuning everything, and on 63 photos no less accurate.
# One torch thread: on a CPU shared with other work, two threads waiting on each other ran the
# augmentation 7x and the network 6x slower than one (measured on the 2-core dev machine at load 4).
TRAIN_ARGS = "--backbone-lr-scale 0 --freeze-bn --lr 1e-2 --threads 1"
EXPORT_ARGS = "--no-int8 --threads 1"
YIELD_NAME, YIELD_VERSION, YIELD_CROP = "crop-yield", "0.1.0-demo", "corn"
# A small cube and a short training: the demo shows the path, not a good model (docs/yield-model.md).
YIELD_CUBE_ARGS = "--fields 20 --seasons 3 --seed 1"
YIELD_TRAIN_ARGS = "--epochs 15 --hidden 16 --threads 1 --no-plots --quiet --seed 0"
YIELD_INTERVAL_S = 120.0
# Mid-season, so the outlook is a forecast: the season started this many days before the demo.
SEASON_DAYS_AGO = 45
DEMO_USERS = (("agronomist", "agronomist"), ("farmer", "farmer"), ("admin", "admin"))
DEMO_PASSWORD = "cropwatch-demo"
