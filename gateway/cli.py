"""``cropwatch gateway``: a farm gateway that keeps the farm working with the uplink down.

``init`` writes the gateway's files (Mosquitto with persistence and a bridge to the cloud, the
farm's ingest/monitor config, the health reporter's config, systemd units, a compose file);
``health`` runs the health reporter. See docs/gateway.md.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import sys
import threading
from pathlib import Path, PurePosixPath

from shared.fsutil import atomic_write_bytes, atomic_write_text

from .files import BRIDGE_NAME, GatewayInitError, Plan, gateway_toml, monitor_toml, mosquitto_conf, parse_cloud_url
from .sizing import Fleet, human_bytes, queue_size
from .units import compose_yaml, systemd_units

logger = logging.getLogger(__name__)


def _init_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("init", help="write a farm gateway's configuration")
    p.add_argument("--farm", required=True, help="farm id (the topics' farm segment)")
    p.add_argument("--cloud", required=True, help="cloud broker: mqtts://HOST:PORT (mqtt:// only in a lab)")
    p.add_argument("--out", type=Path, required=True, help="folder to write the files into")
    p.add_argument("--pki", type=Path, help="the cloud's PKI folder (cropwatch devices); required for mqtts://")
    p.add_argument("--gateway-host", action="append", default=[], help="name/IP devices use (repeatable)")
    p.add_argument("--gateway-id", default="gateway", help="device id of the gateway's own reports")
    p.add_argument("--install-dir", default="/etc/cropwatch/gateway", help="where --out will live on the gateway")
    p.add_argument("--state-dir", default="/var/lib/cropwatch/gateway", help="persistence and the farm database")
    p.add_argument("--local-port", type=int, default=1883, help="local services' listener on 127.0.0.1")
    p.add_argument("--device-port", type=int, default=8883, help="devices' TLS listener (0: none)")
    p.add_argument("--retry-max-s", type=int, default=120, help="longest wait between bridge reconnects")
    g = p.add_argument_group("queue sizing (see docs/gateway.md)")
    f = Fleet()
    g.add_argument("--devices", type=int, default=f.devices)
    g.add_argument("--messages-per-hour", type=float, default=f.messages_per_hour, help="per device")
    g.add_argument("--message-bytes", type=int, default=f.message_bytes)
    g.add_argument("--samples-per-day", type=float, default=f.samples_per_day, help="per device")
    g.add_argument("--sample-bytes", type=int, default=f.sample_bytes)
    g.add_argument("--offline-days", type=float, default=f.offline_days)


def init(args: argparse.Namespace) -> int:
    fleet = Fleet(
        devices=args.devices, messages_per_hour=args.messages_per_hour, message_bytes=args.message_bytes,
        samples_per_day=args.samples_per_day, sample_bytes=args.sample_bytes, offline_days=args.offline_days,
    )  # fmt: skip
    cloud = parse_cloud_url(args.cloud)
    out: Path = args.out
    user = password = None
    if args.pki is not None:
        from farm_monitor.provision import Pki

        pki = Pki(args.pki)
        pki.ensure_ca()
        user, password = pki.add_gateway(args.farm)
        certs = out / "certs"
        pki.issue_files(user, certs, "bridge")
        names = args.gateway_host or ["gateway.local"]
        pki.issue_files(names[0], certs, "server", server_names=names)
        atomic_write_bytes(certs / "ca.crt", pki.ca_cert_path.read_bytes(), mode=0o644)
        for name in ("mosquitto.passwd", "mosquitto.acl"):
            shutil.copyfile(args.pki / name, out / name)
    elif cloud.tls:
        raise GatewayInitError("--cloud mqtts:// needs --pki (the cloud's PKI folder issues the bridge certificate)")
    plan = Plan(
        farm_id=args.farm, cloud=cloud, queue=queue_size(fleet), install_dir=PurePosixPath(args.install_dir),
        state_dir=PurePosixPath(args.state_dir), local_port=args.local_port,
        device_port=(args.device_port or None) if args.pki is not None else None, gateway_id=args.gateway_id,
        bridge_user=user, bridge_password=password, retry_max_s=args.retry_max_s,
        retry_min_s=min(5, args.retry_max_s),
    )  # fmt: skip
    # mosquitto.conf holds the bridge's password (Mosquitto has no password-file option for bridges).
    atomic_write_text(out / "mosquitto.conf", mosquitto_conf(plan), mode=0o600)
    atomic_write_text(out / "monitor.toml", monitor_toml(plan), mode=0o644)
    atomic_write_text(out / "gateway.toml", gateway_toml(plan), mode=0o644)
    for name, text in systemd_units(plan).items():
        atomic_write_text(out / "systemd" / name, text, mode=0o644)
    atomic_write_text(out / "compose.yaml", compose_yaml(plan), mode=0o644)
    q = plan.queue
    print(f"farm gateway of {args.farm} written to {out} (install it as {args.install_dir})")
    print(f"bridge '{BRIDGE_NAME}' to {cloud.host}:{cloud.port} ({'TLS' if cloud.tls else 'plain TCP'})")
    print(
        f"bridge queue: {q.messages} messages, {human_bytes(q.bytes)} for {fleet.offline_days:g} days offline "
        f"of {fleet.devices} devices; about {human_bytes(q.memory_bytes)} of RAM when full"
    )
    if user:
        print(f"cloud broker: user {user} added to {args.pki}/mosquitto.passwd and services/gateway-{args.farm}.acl;")
        print("  reload the cloud Mosquitto (systemctl reload mosquitto) so the bridge may connect")
    return 0


def health(args: argparse.Namespace) -> int:
    from shared.config import command_config

    from .config import GatewayConfig
    from .health import HealthReporter

    cfg = command_config(GatewayConfig, args.config, "cropwatch gateway health", args.check_config)
    if isinstance(cfg, int):
        return cfg
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return HealthReporter(cfg).run(stop)


def main(argv: list[str], prog: str = "cropwatch gateway") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    _init_parser(sub)
    h = sub.add_parser("health", help="report the gateway's uplink, backlog and disk to the cloud")
    h.add_argument("--config", default="gateway.toml")
    h.add_argument("--check-config", action="store_true")
    args = parser.parse_args(argv)
    try:
        return init(args) if args.action == "init" else health(args)
    except (GatewayInitError, ValueError) as exc:
        print(f"{prog} {args.action}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from farm_monitor.provision import ProvisionError

        if isinstance(exc, ProvisionError):
            print(f"{prog} {args.action}: {exc}", file=sys.stderr)
            return 2
        raise
