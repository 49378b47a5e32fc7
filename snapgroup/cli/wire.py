"""What the launcher (launch.py) and the daemon (command_server.py, daemon.py) agree on:
the socket, the environment compared, the frames. Standard library only, like the
launcher: both import this, neither imports the other."""

from __future__ import annotations

import os

TYPE_CHECKING = False  # not typing's: importing typing costs ~14 ms of start-up
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

SOCKET_ENV = "SNAPGROUP_SOCKET"
NO_DAEMON_ENV = "SNAPGROUP_NO_DAEMON"  # "1": always run in this process
DEFAULT_SOCKET = "/run/snapgroup/cli.sock"
# The environment that can change what a command does; the daemon runs a command only
# when the client's agrees with its own (the store's URL and libvirt's URI are compared
# once resolved, in snapgroup.cli.command_server).
ENV_PREFIXES = ("SNAPGROUP_", "LIBVIRT_")
MAX_FRAME = 1 << 20


def socket_path() -> str:
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def relevant_env(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if k.startswith(ENV_PREFIXES)}


def encode(message: dict[str, Any]) -> bytes:
    import json  # not at import: a command without the daemon never encodes

    return json.dumps(message, ensure_ascii=False).encode() + b"\n"
