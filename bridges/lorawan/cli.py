"""``cropwatch bridge lorawan``: run the bridge, check its config, or print its broker ACL."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

from shared.config import command_config

from .config import LorawanConfig, acl_lines

logger = logging.getLogger(__name__)


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Subscribe to a LoRaWAN network server's uplinks (ChirpStack v4 or The Things Stack v3 "
        "MQTT integration), map each device's decoded fields to Cropwatch quantities and publish them as "
        "telemetry under the mapped device's identity. See docs/lorawan.md.",
    )
    parser.add_argument("--config", "-c", help="lorawan.toml (CROPWATCH_* environment variables override it)")
    parser.add_argument("--check-config", action="store_true", help="print the resolved config (secrets redacted)")
    parser.add_argument(
        "--print-acl", action="store_true", help="print the Mosquitto ACL lines for the bridge's broker user"
    )
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    return parser


def main(argv: list[str], prog: str = "cropwatch bridge lorawan") -> int:
    args = _parser(prog).parse_args(argv)
    cfg = command_config(LorawanConfig, args.config, prog, args.check_config)
    if isinstance(cfg, int):
        return cfg
    if args.print_acl:
        try:
            print(acl_lines(cfg), end="")
        except ValueError as exc:
            print(f"{prog}: {exc}", file=sys.stderr)
            return 2
        return 0
    if not cfg.devices:
        print(f"{prog}: no [[devices]] mapped in the config; the bridge would drop every uplink", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(cfg)


def run(cfg: LorawanConfig, stop: threading.Event | None = None) -> int:
    from .service import Bridge

    stop = stop or threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        logger.info("%s received: stopping", signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    bridge = Bridge(cfg)
    logger.info(
        "lorawan bridge: %s uplinks from %s (%s) to %s, %d devices mapped",
        cfg.network_server.format, cfg.network_server.url, cfg.network_server.uplink_topic,
        cfg.cropwatch.url, len(cfg.devices),
    )  # fmt: skip
    return bridge.run(stop)
