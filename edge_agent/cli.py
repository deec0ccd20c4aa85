"""``cropwatch agent --config agent.toml [--check-config]``: the field daemon."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from shared.config import redacted_json
from shared.errors import ConfigError

logger = logging.getLogger(__name__)

EXIT_CONFIG = 2
EXIT_LOCKED = 75  # EX_TEMPFAIL: systemd may try again once the other instance is gone


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run the Cropwatch field agent: sources -> models -> outbox -> MQTT v5.",
        epilog="Signals: SIGTERM stops within shutdown_deadline_s, SIGHUP reloads the config. "
        "Environment: CROPWATCH_CONFIG names the config file; CROPWATCH_SECTION__KEY overrides a setting.",
    )
    parser.add_argument("--config", type=Path, default=os.environ.get("CROPWATCH_CONFIG"), help="agent.toml")
    parser.add_argument(
        "--check-config", action="store_true", help="validate the config, print it with secrets redacted, exit"
    )
    return parser


def main(argv: list[str], prog: str = "cropwatch agent") -> int:
    args = build_parser(prog).parse_args(argv)
    from .config import load_agent_config

    if args.config is None:
        print(f"{prog}: give --config agent.toml (or set CROPWATCH_CONFIG)", file=sys.stderr)
        return EXIT_CONFIG
    try:
        cfg = load_agent_config(args.config)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        print(redacted_json(cfg))
        return 0

    from .daemon import Agent
    from .lock import AlreadyRunning
    from .logs import setup_logging

    setup_logging(cfg.log.level, cfg.log.format)
    agent = Agent(cfg, config_path=args.config)
    agent.install_signals()
    try:
        agent.start()
    except AlreadyRunning as exc:
        logger.error("%s", exc)
        return EXIT_LOCKED
    try:
        return agent.run()
    finally:
        agent.stop()
