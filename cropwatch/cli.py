"""The single ``cropwatch`` console script (also ``python -m cropwatch``).

It names every component, so it lives in this package, whose job is importing them all, and not
in the contract. Subcommands are listed here by name only and their modules are imported when one
is run, so ``cropwatch agent --help`` needs only the ``edge`` extra and ``cropwatch --help`` needs
nothing.
Each subcommand module exposes ``main(argv: list[str], prog: str) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help, extra that provides its dependencies)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "version": ("shared.commands", "print versions of Cropwatch and its runtime", "edge"),
    "schema": ("shared.commands", "print the JSON Schema of every message kind", "edge"),
    "keys": ("shared.commands", "manage Ed25519 model-signing keys (keys generate)", "edge"),
    "broker": ("farm_monitor.broker", "run the embedded MQTT broker", "broker"),
    "agent": ("edge_agent.cli", "run the field agent daemon", "edge"),
    "ingest": ("farm_monitor.ingest.cli", "store device messages from MQTT in the database", "monitor"),
    "monitor": ("farm_monitor.app.cli", "serve the Streamlit farm monitor", "monitor"),
    "db": ("farm_monitor.db_cli", "database maintenance (prune, size, migrate)", "monitor"),
    "notify": ("farm_monitor.notify.cli", "send alerts to subscribers' phones and inboxes (Apprise)", "monitor"),
    "users": ("farm_monitor.app.users_cli", "manage monitor users and roles", "monitor"),
    "report": ("farm_monitor.app.report_cli", "farm report as PDF/HTML; send the due daily/weekly mails", "monitor"),
    "data": ("cropwatch.data_cli", "build datasets: synthetic leaves, yield cubes, label export", "trainer"),
    "train": ("cloud_trainer.train_cli", "train a disease or yield model", "trainer"),
    "evaluate": (
        "cloud_trainer.evaluate_cli",
        "how far a disease run can be trusted on other data (protocols)",
        "trainer",
    ),
    "export": ("cloud_trainer.export_cli", "export a training run to signed ONNX", "trainer"),
    "retrain": ("cloud_trainer.retrain_cli", "retrain from field labels, gated by evaluation", "trainer"),
    "models": ("fleet.models_cli", "model registry and rollout (list, import, publish, ...)", "edge"),
    "registry": ("fleet.registry_cli", "serve the model registry over HTTP", "edge"),
    "devices": ("farm_monitor.devices_cli", "provision device credentials and configs", "edge"),
    "gateway": ("gateway.cli", "farm gateway: init its bridged broker and configs; health reporter", "monitor"),
    "bridge": ("bridges.cli", "bridge other networks to Cropwatch (bridge lorawan)", "edge"),
    "demo": ("cropwatch.demo", "run the demo farm on this machine", "all"),
}

# A missing module of one of these is a command not written yet, not a dependency to install.
_OWN_PACKAGES = {"cropwatch", "shared"} | {module.split(".")[0] for module, _, _ in COMMANDS.values()}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cropwatch",
        description="Cropwatch: leaf-disease and yield models from the cloud to field devices.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n"
        + "\n".join(f"  {name:<10} {help_}" for name, (_, help_, _) in COMMANDS.items())
        + "\n\nRun 'cropwatch COMMAND --help' for a command's options.",
    )
    parser.add_argument("command", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    if argv[0] == "--version":
        argv = ["version"]
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        parser.print_usage(sys.stderr)
        print(f"cropwatch: unknown command {name!r}; run 'cropwatch --help' for the list", file=sys.stderr)
        return 2
    module_name, _, extra = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or "a dependency"
        if missing.split(".")[0] in _OWN_PACKAGES:
            if module_name == missing or module_name.startswith(missing + "."):
                print(f"cropwatch {name}: not implemented yet in this version of Cropwatch", file=sys.stderr)
                return 3
            raise
        print(
            f"cropwatch {name}: needs {missing}, which is not installed; install it with "
            f"pip install 'cropwatch[{extra}]'",
            file=sys.stderr,
        )
        return 3
    return int(module.main(rest, prog=f"cropwatch {name}") or 0)
