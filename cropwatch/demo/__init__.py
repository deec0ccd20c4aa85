"""``cropwatch demo``: a demo farm on this machine, on embedded defaults.

What runs, each as its own process, all stopped by Ctrl-C:

1. an MQTT v5 broker (``cropwatch broker``: Mosquitto with persistence) on a free port, unless
   ``--broker`` names one;
2. the disease model: EfficientNet-Lite0's classifier is trained (ImageNet backbone frozen) on the
   108 real PlantVillage photos shipped with the trainer (``cloud_trainer/disease/leaf_sample``,
   CC BY-SA 3.0), 3 per class held out; the held-out accuracy is printed; the model is exported to
   signed ONNX and imported into a registry folder, which ``cropwatch registry serve`` serves; a
   second run reuses all of it;
3. ``cropwatch ingest`` storing every message in SQLite (``var/demo/cropwatch.db``);
4. simulated field devices, each a real ``cropwatch agent`` with a watched folder (the demo drops
   the held-out real photos into it, like a camera trap, each frame rotated, rescaled and re-lit)
   and simulated soil/air sensors;
5. the farm monitor at http://localhost:8501, with demo logins printed;
6. ``cropwatch notify`` with a local mailbox (an SMTP server in the demo process): every alert of the
   demo farm is mailed to the demo agronomist, printed on the console and written to
   ``var/demo/mailbox/*.eml``;
7. the yield model, built in the background once the disease model is published (a synthetic
   season cube, ``cropwatch train yield``, signed ONNX export; under a minute), imported and
   published through the same rollout path; the agents' yield runners start with it and their
   estimates reach the database. A second run reuses it too.

The console shows progress throughout and then live counts from the database.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

from .settings import DEVICE_IDS


def main(argv: list[str], prog: str = "cropwatch demo") -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--broker", help="use this MQTT v5 broker (mqtt://host:port) instead of starting one")
    parser.add_argument("--data-dir", type=Path, default=Path("var/demo"), help="state of the demo (reused)")
    parser.add_argument("--devices", type=int, default=3, choices=range(1, len(DEVICE_IDS) + 1))
    parser.add_argument("--photo-interval", type=float, default=5.0, help="seconds between photos per device")
    parser.add_argument("--duration", type=float, help="stop this many seconds after the first detection")
    parser.add_argument("--no-monitor", action="store_true", help="do not start the web monitor")
    parser.add_argument("--no-yield", action="store_true", help="do not build and publish the yield model")
    parser.add_argument(
        "--first-detection-timeout", type=float, default=900.0, help="give up when no detection arrives by then (s)"
    )
    parser.add_argument("--port", type=int, default=8501, help="web monitor port (default 8501)")
    parser.add_argument("--model-manifest", type=Path, help=argparse.SUPPRESS)  # tests: a prepared model
    parser.add_argument("--trusted-key", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--photos", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if not args.broker and not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        print(f"{prog}: needs an MQTT v5 broker: install mosquitto or pass --broker", file=sys.stderr)
        return 1
    from .farm import run_demo

    return run_demo(args)
