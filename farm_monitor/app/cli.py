"""``cropwatch monitor --config monitor.toml [--port 8501]``: serve the Streamlit farm monitor."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ..config import MonitorConfig, command_config

logger = logging.getLogger(__name__)
MAIN = Path(__file__).parent / "main.py"


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve the farm monitor (Streamlit) over the monitor database. It reads only the database; "
        "users come from app.users_file ('cropwatch users add').",
    )
    parser.add_argument("--config", "-c", help="monitor.toml (CROPWATCH_* environment variables override it)")
    parser.add_argument("--port", type=int, help="overrides app.port")
    parser.add_argument("--host", help="overrides app.host (0.0.0.0 to listen on every interface)")
    parser.add_argument("--check-config", action="store_true", help="print the resolved config (secrets redacted)")
    return parser


def streamlit_command(cfg: MonitorConfig, host: str, port: int) -> list[str]:
    return [
        sys.executable, "-m", "streamlit", "run", str(MAIN),
        "--server.port", str(port), "--server.address", host, "--server.headless", "true",
        "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
        "--client.toolbarMode", "minimal", "--theme.base", "light",
        # pages catch their own errors; anything that escapes still shows no traceback to users
        "--client.showErrorDetails", "none",
    ]  # fmt: skip


def main(argv: list[str], prog: str = "cropwatch monitor") -> int:
    args = _parser(prog).parse_args(argv)
    cfg = command_config(args.config, prog, args.check_config)
    if isinstance(cfg, int):
        return cfg
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ..db import make_engine, migrate

    try:
        engine = make_engine(cfg.database, writer=True)
        migrate(engine, timescaledb=cfg.database.timescaledb)
        engine.dispose()
    except Exception as exc:
        print(f"{prog}: cannot open the database {cfg.database.url}: {exc}", file=sys.stderr)
        return 1
    if not Path(cfg.app.users_file).exists():
        print(f"{prog}: no users yet; create one: cropwatch users add NAME --role admin --config ...", file=sys.stderr)
    env = dict(os.environ)
    if args.config:
        env["CROPWATCH_CONFIG"] = str(Path(args.config).resolve())
    cmd = streamlit_command(cfg, args.host or cfg.app.host, args.port or cfg.app.port)
    logger.info("serving the monitor on http://%s:%s", args.host or cfg.app.host, args.port or cfg.app.port)
    sys.stdout.flush()
    sys.stderr.flush()
    # Become the Streamlit server rather than wrap it: signals from systemd, the demo or Ctrl-C
    # then reach it directly, and no server is left behind when this process is stopped.
    os.execve(cmd[0], cmd, env)
    return 1  # pragma: no cover - execve does not return
