"""What the launcher (launch.py) and the daemon (command_server.py, daemon.py) agree on:
the socket, the environment compared, the frames. Standard library only, like the
launcher: both import this, neither imports the other.

The request is one line of JSON, {"argv": [...], "env": {...}, "tty": [out, err]}, made
by the client with _json's C string encoder: the json package imports re and its
scanner (~3 ms of the client's ~15). Each reply is a frame: a letter for its kind
(KINDS), the payload's length in bytes, ':', the payload (UTF-8), read with bytes
operations alone."""

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


# A reply's kind: output, error output, the exit status, or declined (run it yourself).
KINDS = {"out": b"o", "err": b"e", "exit": b"x", "fallback": b"f"}
_NAMES = {letter[0]: name for name, letter in KINDS.items()}


def encode(message: dict[str, Any]) -> bytes:
    """One reply, {kind: payload}, as its frame."""
    ((kind, value),) = message.items()
    payload = str(value).encode("utf-8", "surrogateescape")
    return KINDS[kind] + b"%d:" % len(payload) + payload


def request_line(argv: list[str], env: dict[str, str], tty: tuple[bool, bool]) -> bytes:
    """The client's request (ASCII JSON, one line)."""
    from _json import encode_basestring_ascii as quote

    variables = ",".join(f"{quote(k)}:{quote(v)}" for k, v in env.items())
    flags = ",".join("true" if t else "false" for t in tty)
    line = f'{{"argv":[{",".join(map(quote, argv))}],"env":{{{variables}}},"tty":[{flags}]}}\n'
    return line.encode("ascii")


class Frames:
    """The replies in the bytes a client receives, as (kind, payload) once complete."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[tuple[str, str]]:
        self._buffer += data
        found: list[tuple[str, str]] = []
        while True:
            colon = self._buffer.find(b":", 1, 24)
            if colon < 0:
                if len(self._buffer) >= 24:
                    raise ValueError("not a reply frame")
                return found
            kind, size = _NAMES.get(self._buffer[0]), int(self._buffer[1:colon])
            end = colon + 1 + size
            if kind is None or size < 0:
                raise ValueError("not a reply frame")
            if len(self._buffer) < end:
                return found
            payload = self._buffer[colon + 1 : end].decode("utf-8", "surrogateescape")
            found.append((kind, payload))
            self._buffer = self._buffer[end:]
