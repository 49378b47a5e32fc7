"""snapgroup account set-password NAME | delete NAME | list: the REST API's accounts."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from snapgroup.cli.context import Context
from snapgroup.cli.output import print_json
from snapgroup.domain.errors import InvalidArgument


def register(sub: Any) -> None:
    parser = sub.add_parser("account")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    set_password = actions.add_parser(
        "set-password",
        help="create an account or change its password (ends its sessions)",
        description="The password is asked twice on the terminal, or read from one line of "
        "stdin with --password-stdin. Only a salted hash of its SHA-512 digest is stored.",
    )
    set_password.add_argument("name", metavar="NAME")
    set_password.add_argument("--password-stdin", action="store_true")
    delete = actions.add_parser("delete", help="delete an account and its sessions")
    delete.add_argument("name", metavar="NAME")
    actions.add_parser("list", help="list the accounts")
    # Accounts are metadata only: no VM operation to recover first.
    parser.set_defaults(run=run, skip_auto_recover=True)


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise InvalidArgument("the passwords differ")
    return first


def run(args: argparse.Namespace, ctx: Context) -> int:
    from snapgroup.rest.auth import Accounts  # snapgroup.rest loads the web stack: only here

    accounts = Accounts(ctx.engine.db)
    if args.action == "set-password":
        created = accounts.set_password(args.name, _read_password(args.password_stdin))
        message = "created" if created else "password changed; its sessions ended"
        ctx.out.write(f"account {args.name}: {message}\n")
    elif args.action == "delete":
        accounts.delete(args.name)
        ctx.out.write(f"account {args.name}: deleted\n")
    elif ctx.as_json:
        print_json({"inventories": [{"name": n} for n in accounts.names()]}, ctx.out)
    else:
        for name in accounts.names():
            ctx.out.write(f"{name}\n")
    return 0
