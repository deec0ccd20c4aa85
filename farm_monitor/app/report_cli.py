"""``cropwatch report``: build a farm report (PDF, optionally HTML with its PNGs), or send the due ones.

Here, beside ``cropwatch users``, because sending due reports scopes each subscriber to the farms
the users file lets them see.
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy.engine import Engine

from shared.fsutil import atomic_write_bytes, atomic_write_text

from ..config import MonitorConfig, command_config
from ..db import make_engine
from ..layout import LayoutError, load_layout
from ..report import build_farm_report, deliver_due_reports, load_report_subscriptions
from ..report.deliver import Outcome
from .auth import UsersFile

logger = logging.getLogger(__name__)
DAYS = {"daily": 1, "weekly": 7}


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Build a farm report as PDF (and HTML with inline PNGs), or send the daily and weekly "
        "reports that are due to their subscribers (--deliver-due).",
    )
    p.add_argument("--config", "-c", help="monitor.toml")
    p.add_argument("--check-config", action="store_true", help="print the config with secrets redacted and exit")
    p.add_argument("--farm", help="farm id (default: every farm, one section each)")
    p.add_argument("--period", choices=list(DAYS), default="weekly", help="a day or a week (default weekly)")
    p.add_argument("--end", type=date.fromisoformat, help="the last day the report covers, YYYY-MM-DD "
                   "(default: yesterday)")  # fmt: skip
    p.add_argument("--timezone", default="UTC", help="days run from midnight to midnight in this zone (default UTC)")
    p.add_argument("--out", type=Path, help="write the PDF here")
    p.add_argument("--html", type=Path, metavar="DIR", help="write report.html and its PNGs into DIR")
    p.add_argument("--deliver-due", action="store_true",
                   help="send every subscriber's due report once (the ledger skips those already sent)")  # fmt: skip
    return p


def main(argv: list[str], prog: str = "cropwatch report") -> int:
    args = _parser(prog).parse_args(argv)
    cfg = command_config(args.config, prog, args.check_config)
    if isinstance(cfg, int):
        return cfg
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.deliver_due:
        return _deliver(cfg)
    if args.out is None and args.html is None:
        print(f"{prog}: say where the report goes: --out report.pdf and/or --html DIR", file=sys.stderr)
        return 2
    try:
        zone = ZoneInfo(args.timezone)
        layout = load_layout(cfg.app.farm_file)
    except ZoneInfoNotFoundError:
        print(f"{prog}: unknown time zone {args.timezone!r}; use an IANA name such as Europe/Berlin", file=sys.stderr)
        return 2
    except LayoutError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    last = args.end or (datetime.now(zone).date() - timedelta(days=1))
    end = datetime.combine(last + timedelta(days=1), time(0), tzinfo=zone)
    start = datetime.combine(last - timedelta(days=DAYS[args.period] - 1), time(0), tzinfo=zone)
    engine = make_engine(cfg.database)
    report = build_farm_report(
        engine, args.farm, start.astimezone(UTC), end.astimezone(UTC), cfg.report.monitor_url, layout=layout,
        rule=cfg.alerts.disease, risk_window_h=cfg.app.risk_window_hours,
        silent_after_s=cfg.alerts.device_offline.after_s,
    )  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(args.out, report.pdf)
        print(f"wrote {args.out} ({len(report.pdf) // 1024} KiB): {report.subject}")
    if args.html:
        args.html.mkdir(parents=True, exist_ok=True)
        page = report.html
        for cid, png in report.images.items():
            name = cid.partition("@")[0] + ".png"
            atomic_write_bytes(args.html / name, png)
            page = page.replace(f"cid:{cid}", name)  # the saved page opens in a browser
        atomic_write_text(args.html / "report.html", page)
        print(f"wrote {args.html / 'report.html'} and {len(report.images)} charts")
    return 0


def deliver_due(cfg: MonitorConfig, engine: Engine, now: datetime) -> list[Outcome]:
    """Every subscriber's due report, once; the users file says which farms each may see.

    Here rather than in the report package because the users file belongs to the app; the notify
    service runs this every ``[report] deliver_every_s``.
    """
    users = UsersFile(cfg.app.users_file).list()
    known = sorted({f for u in users for f in u.farms if f != "*"} | set(load_layout(cfg.app.farm_file).farms()))
    user_farms = {u.username: u.visible_farms(known) for u in users}
    subs = load_report_subscriptions(engine, user_farms)
    return deliver_due_reports(engine, cfg, now, subs)


def _deliver(cfg: MonitorConfig) -> int:
    engine = make_engine(cfg.database, writer=True)
    outcomes = deliver_due(cfg, engine, datetime.now(UTC))
    for o in outcomes:
        print(f"{o.status:8} {o.user} {o.farm} {o.period}" + (f": {o.error}" if o.error else ""))
    return 1 if any(o.status in ("failed", "dead") for o in outcomes) else 0
