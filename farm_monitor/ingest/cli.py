"""``cropwatch ingest --config monitor.toml``: store device messages from MQTT in the database."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shared.errors import ConfigError

from ..config import MonitorConfig, command_config

if TYPE_CHECKING:  # imported when run, so that --help and --check-config stay fast
    from sqlalchemy import Engine

    from .pipeline import Ingestor
    from .transport import MqttTransport

logger = logging.getLogger(__name__)


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Subscribe to the device topics (MQTT v5, QoS 1), validate every message and store it "
        "exactly once in SQLite or PostgreSQL. Stops cleanly on SIGTERM/SIGINT: commits and acknowledges "
        "what it holds.",
    )
    parser.add_argument("--config", "-c", help="monitor.toml (CROPWATCH_* environment variables override it)")
    parser.add_argument("--check-config", action="store_true", help="print the resolved config (secrets redacted)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="overrides log_level")
    return parser


def main(argv: list[str], prog: str = "cropwatch ingest") -> int:
    args = _parser(prog).parse_args(argv)
    cfg = command_config(args.config, prog, args.check_config)
    if isinstance(cfg, int):
        return cfg
    logging.basicConfig(
        level=(args.log_level or cfg.log_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return run(cfg)


def _open_database(cfg: MonitorConfig) -> Engine | int:
    """The migrated database engine, or the exit code after logging why it cannot be opened."""
    from sqlalchemy.exc import OperationalError

    from ..db import make_engine, migrate

    try:
        engine = make_engine(cfg.database, writer=True)
        applied = migrate(engine, timescaledb=cfg.database.timescaledb)
    except ConfigError as exc:
        logger.error("%s", exc)
        return 2
    except OperationalError as exc:
        logger.error(
            "cannot open the database %s: %s; check [database] url and that it is running",
            cfg.database.url.split("@")[-1],
            exc.orig,
        )
        return 1
    if applied:
        logger.info("database migrated to version %d", applied[-1])
    return engine


def _health(cfg: MonitorConfig, ingestor: Ingestor, transport: MqttTransport) -> Callable[[], dict[str, Any]]:
    def health() -> dict[str, Any]:
        age = ingestor.oldest_pending_age()
        since_commit = None if ingestor.last_commit is None else round(time.monotonic() - ingestor.last_commit, 3)
        ok = transport.connected.is_set() and ingestor.db_ok and age < cfg.metrics.stale_after_s
        return {
            "ok": ok,
            "mqtt_connected": transport.connected.is_set(),
            "subscribed": transport.subscribed.is_set(),
            "database_ok": ingestor.db_ok,
            "pending_messages": ingestor.pending(),
            "oldest_pending_s": round(age, 3),
            "seconds_since_commit": since_commit,
            "batches": ingestor.batches,
        }

    return health


def run(cfg: MonitorConfig, stop: threading.Event | None = None) -> int:
    from .metrics import Metrics, MetricsServer
    from .pipeline import Ingestor
    from .transport import MqttTransport

    stop = stop or threading.Event()
    engine = _open_database(cfg)
    if isinstance(engine, int):
        return engine
    metrics = Metrics()
    transport = MqttTransport(
        cfg.mqtt,
        cfg.ingest.topic_filter,
        metrics,
        client_id=cfg.ingest.client_id,
        shared_group=cfg.ingest.shared_group,
        receive_maximum=cfg.ingest.receive_maximum,
    )
    ingestor = Ingestor(cfg, engine, metrics, ack=transport.ack)
    health = _health(cfg, ingestor, transport)

    server = None
    if cfg.metrics.port:
        try:
            server = MetricsServer(cfg.metrics.host, cfg.metrics.port, metrics, health)
        except OSError as exc:
            logger.error(
                "cannot serve metrics on %s:%d (%s); change [metrics] port, or set it to 0 to turn metrics off",
                cfg.metrics.host, cfg.metrics.port, exc.strerror,
            )  # fmt: skip
            engine.dispose()
            return 2
        server.start()

    def on_signal(signum: int, _frame: Any) -> None:
        logger.info(
            "%s received: committing and acknowledging what is held, then stopping", signal.Signals(signum).name
        )
        transport.pause()
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    transport.subscribe(ingestor.submit)
    logger.info(
        "ingest running: database %s, batches of up to %d messages or %.2f s",
        engine.url.render_as_string(hide_password=True),
        cfg.ingest.batch_max_messages,
        cfg.ingest.batch_max_s,
    )
    try:
        ingestor.run(stop, transport.poll)
    finally:
        transport.pause()
        transport.stop()
        if server is not None:
            server.stop()
        engine.dispose()
    logger.info(
        "ingest stopped after %d batches; received %d messages, %d dead letters",
        ingestor.batches,
        int(metrics.total("cropwatch_ingest_received_total")),
        int(metrics.total("cropwatch_ingest_dead_letters_total")),
    )
    return 0
