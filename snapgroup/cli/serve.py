"""snapgroup serve [--listen 127.0.0.1:8080] [--context-path /zstack]: the seed's REST
API for ZStack clients (snapgroup.rest). Loopback only unless --allow-remote."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
from typing import Any

from snapgroup.cli.context import Context
from snapgroup.domain.errors import InvalidArgument
from snapgroup.domain.validate import is_short_name

DEFAULT_LISTEN = "127.0.0.1:8080"


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "serve",
        description="Serve the API at http://HOST:PORT<context-path>/v1. Every call needs "
        "a session from PUT <context-path>/v1/accounts/login (`snapgroup account "
        "set-password` makes an account).",
    )
    parser.add_argument(
        "--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT", help=f"default {DEFAULT_LISTEN}"
    )
    parser.add_argument("--context-path", default="/zstack", metavar="PATH")
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a HOST that is not loopback (plain HTTP: put TLS in front of it)",
    )
    parser.add_argument(
        "--session-timeout", type=float, default=7200.0, metavar="SECONDS", help="default 7200"
    )
    parser.add_argument("--workers", type=int, default=4, help="operations run at once (default 4)")
    parser.add_argument(
        "--queue-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="how long an operation on a busy VM waits its turn, then fails Busy (default 600)",
    )
    parser.add_argument(
        "--backup-repo",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="serve the backup repository in DIR (absolute) as NAME; repeatable. Clients "
        "name repositories, never directories",
    )
    parser.add_argument(
        "--advertise",
        metavar="URL",
        help="the URL other hosts of the store reach this server at (default: "
        "http://HOST:PORT<context-path>, HOST the host's name when listening on all)",
    )
    parser.set_defaults(run=run)


def advertised(host: str, port: int, context_path: str) -> str:
    """The URL recorded in the host registry for this server."""
    from snapgroup.rest.app import normalize_context_path

    name = socket.getfqdn() if host in ("0.0.0.0", "::", "") else host
    shown = f"[{name}]" if ":" in name else name
    return f"http://{shown}:{port}{normalize_context_path(context_path)}"


def parse_repositories(specs: list[str]) -> dict[str, str]:
    """["offsite=/mnt/backup"] -> {"offsite": "/mnt/backup"}; InvalidArgument for a bad
    name, a relative directory or a name given twice."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, directory = spec.partition("=")
        if not sep or not is_short_name(name):
            raise InvalidArgument(
                f"--backup-repo {spec!r}: NAME=DIR, NAME of letters, digits, '.', '_', '-'"
            )
        if not os.path.isabs(directory):
            raise InvalidArgument(f"--backup-repo {spec!r}: DIR must be an absolute path")
        if name in out:
            raise InvalidArgument(f"--backup-repo: {name!r} is given twice")
        out[name] = os.path.normpath(directory)
    return out


def parse_listen(listen: str) -> tuple[str, int]:
    """ "127.0.0.1:8080", "[::1]:8080", "localhost:8080" -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f"--listen {listen!r} is not HOST:PORT")
    return host.removeprefix("[").removesuffix("]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def run(args: argparse.Namespace, ctx: Context) -> int:
    host, port = parse_listen(args.listen)
    if not is_loopback(host) and not args.allow_remote:
        raise InvalidArgument(
            f"{host} is not a loopback address: the API would reach the network "
            "(--allow-remote to mean it)"
        )
    if args.workers < 1:
        raise InvalidArgument("--workers must be at least 1")
    if args.queue_timeout < 0:
        raise InvalidArgument("--queue-timeout must not be negative")
    repositories = parse_repositories(args.backup_repo)
    # Only now: the web stack is not loaded for the other commands.
    import uvicorn

    from snapgroup.rest import create_app
    from snapgroup.rest.app import normalize_context_path
    from snapgroup.rest.heartbeat import Heartbeat
    from snapgroup.rest.queue import Pickup

    engine = ctx.engine  # opened (and recovered) before the first request
    app = create_app(
        lambda: engine,
        context_path=args.context_path,
        session_timeout=args.session_timeout,
        workers=args.workers,
        queue_timeout=args.queue_timeout,
        backup_repositories=repositories,
    )
    shown = f"[{host}]" if ":" in host else host
    ctx.err.write(
        f"snapgroup serving http://{shown}:{port}{normalize_context_path(args.context_path)}/v1\n"
    )
    ctx.err.flush()
    verbose = logging.getLogger().level <= logging.DEBUG
    # The host's lease, renewed while serving, with the address other hosts use; the
    # requests queued for this host run through this server's own loopback address.
    local = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    here = f"http://{f'[{local}]' if ':' in local else local}:{port}"
    pickup = Pickup(app.state.services, here + normalize_context_path(args.context_path))
    address = args.advertise or advertised(host, port, args.context_path)
    with Heartbeat(engine, address, pickup=pickup):
        uvicorn.run(
            app,
            host=host,
            port=port,
            log_level="info" if verbose else "warning",
            access_log=verbose,
        )
    return 0
