"""``cropwatch devices``: provision field devices (certificate, broker password, ACL, agent config)."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from .provision import INGEST_USER, OPS_USER, Pki, ProvisionError


def main(argv: list[str], prog: str = "cropwatch devices") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--pki", type=Path, default=Path("var/pki"), help="PKI folder (keep it safe; default var/pki)")
    sub = parser.add_subparsers(dest="action", required=True)
    prov = sub.add_parser("provision", help="credentials and agent config for one device")
    prov.add_argument("device_id")
    prov.add_argument("--farm", required=True, help="farm id")
    prov.add_argument("--broker-host", default="broker.example.org", help="host name devices connect to")
    prov.add_argument("--broker-port", type=int, default=8883)
    prov.add_argument("--out", type=Path, default=Path("var/devices"), help="where device folders go")
    srv = sub.add_parser("server-cert", help="TLS certificate for the broker, signed by the farm CA")
    srv.add_argument("names", nargs="+", help="DNS names or IP addresses of the broker")
    svc = sub.add_parser("service-password", help=f"set the broker password of {INGEST_USER} or {OPS_USER}")
    svc.add_argument("user", choices=(INGEST_USER, OPS_USER))
    svc.add_argument("--password-file", type=Path, help="read it from this file instead of a prompt")
    sub.add_parser("list", help="provisioned devices")
    sub.add_parser("acl", help="rewrite mosquitto.acl from devices.json and PKI/services/*.acl (service users' blocks)")
    args = parser.parse_args(argv)
    pki = Pki(args.pki)
    try:
        if args.action == "provision":
            bundle = pki.provision(args.farm, args.device_id, args.out, args.broker_host, args.broker_port)
            print(f"device {bundle.identity}: credentials in {bundle.folder}")
            print(f"broker files updated: {args.pki}/mosquitto.passwd, {args.pki}/mosquitto.acl")
            print("reload Mosquitto to apply them: systemctl reload mosquitto (or kill -HUP its pid)")
            print(f"--- {bundle.folder / 'agent.toml'} ---")
            print((bundle.folder / "agent.toml").read_text(), end="")
        elif args.action == "server-cert":
            cert, key = pki.server_cert(args.names)
            print(f"broker certificate {cert}, key {key}, CA {pki.ca_cert_path}")
        elif args.action == "service-password":
            if args.password_file:
                password = args.password_file.read_text().strip()
            else:
                password = getpass.getpass(f"password for {args.user}: ")
            if not password:
                print(f"{prog}: empty password", file=sys.stderr)
                return 2
            pki.set_service_password(args.user, password)
            print(f"password of {args.user} set in {args.pki}/mosquitto.passwd")
        elif args.action == "acl":
            path = pki.write_acl()
            print(f"{path} rewritten; reload Mosquitto to apply it: systemctl reload mosquitto (or kill -HUP its pid)")
        elif args.action == "list":
            for d in pki.devices():
                print(f"{d['farm_id']}.{d['device_id']}  provisioned {d['provisioned_at']}")
    except ProvisionError as exc:
        print(f"{prog} {args.action}: {exc}", file=sys.stderr)
        return 2
    return 0
