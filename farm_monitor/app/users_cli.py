"""``cropwatch users add|list|remove``: the monitor's users file (argon2 hashes, roles, farms)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from shared.config import load_config
from shared.errors import ConfigError

from ..config import MonitorConfig
from .auth import ROLES, AuthError, UsersFile


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Manage the farm monitor's users and roles.")
    parser.add_argument("--config", "-c", help="monitor.toml (its app.users_file is used)")
    parser.add_argument("--file", help="users file (overrides the config)")
    sub = parser.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", help="add a user (or change one with --replace)")
    add.add_argument("username")
    add.add_argument(
        "--role",
        choices=ROLES,
        required=True,
        help="farmer reads; agronomist labels and rolls out models; admin also manages users and the farm layout",
    )
    add.add_argument("--farm", action="append", default=[], help="a farm id the user may see (repeat); * for all")
    add.add_argument(
        "--password-env", metavar="VAR", help="read the password from this environment variable (default: prompt)"
    )
    add.add_argument("--replace", action="store_true", help="replace an existing user")
    sub.add_parser("list", help="list users (never the hashes)")
    rm = sub.add_parser("remove", help="remove a user")
    rm.add_argument("username")
    return parser


def main(argv: list[str], prog: str = "cropwatch users") -> int:
    args = _parser(prog).parse_args(argv)
    path = args.file
    if path is None:
        try:
            path = load_config(MonitorConfig, args.config).app.users_file
        except ConfigError as exc:
            print(f"{prog}: {exc}", file=sys.stderr)
            return 2
    store = UsersFile(path)
    try:
        if args.action == "list":
            for u in store.list():
                print(f"{u.username:<24} {u.role:<11} {','.join(u.farms)}")
            return 0
        if args.action == "remove":
            if not store.remove(args.username):
                print(f"{prog}: no user {args.username} in {path}", file=sys.stderr)
                return 1
            print(f"removed {args.username}")
            return 0
        if args.password_env:
            password = os.environ.get(args.password_env)
            if password is None:
                print(f"{prog}: environment variable {args.password_env} is not set", file=sys.stderr)
                return 2
        else:
            password = getpass.getpass(f"password for {args.username}: ")
            if getpass.getpass("again: ") != password:
                print(f"{prog}: the passwords differ", file=sys.stderr)
                return 2
        user = store.add(args.username, password, args.role, args.farm, replace=args.replace)
    except AuthError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    print(f"saved {user.username} ({user.role}, farms {','.join(user.farms)}) in {path}")
    return 0
