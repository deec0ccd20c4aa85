"""``cropwatch notify --config monitor.toml``: deliver alerts to subscribers (docs/notifications.md)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from ..config import command_config

logger = logging.getLogger(__name__)


def main(argv: list[str], prog: str = "cropwatch notify") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Send new, escalated and resolved alerts from the monitor database to each subscriber's "
        "channels (Apprise URLs), once per alert, subscriber and channel. Run one or more beside ingest.",
    )
    parser.add_argument("--config", "-c", help="monitor.toml (CROPWATCH_* environment variables override it)")
    parser.add_argument("--check-config", action="store_true", help="print the resolved config (secrets redacted)")
    parser.add_argument("--once", action="store_true", help="one round of planning and delivery, then exit")
    args = parser.parse_args(argv)
    cfg = command_config(args.config, prog, args.check_config)
    if isinstance(cfg, int):
        return cfg
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ..db import make_engine, migrate
    from .service import NotifyService, PeriodicTask

    try:
        engine = make_engine(cfg.database, writer=True)
        migrate(engine, timescaledb=cfg.database.timescaledb)
    except Exception as exc:
        print(f"{prog}: cannot open the database {cfg.database.url}: {exc}", file=sys.stderr)
        return 1
    service = NotifyService(cfg, engine)
    if cfg.report.deliver_every_s > 0:
        from ..app.report_cli import deliver_due

        service.periodic_tasks.append(
            PeriodicTask("farm-report", cfg.report.deliver_every_s, lambda now: deliver_due(cfg, engine, now))
        )
    if args.once:
        print(service.tick())
        service.close()
        return 0
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    service.run(stop)
    engine.dispose()
    return 0
