"""The `snapgroup` command's entry point. When a `snapgroup daemon` listens on this
host, the command runs there, on an engine whose libvirt connection and store are
already open, and only its output travels back (as virsh leaves the work to libvirtd,
or Mercurial's chg to its command server). Otherwise, or whenever the daemon cannot
run exactly this invocation, the command runs in this process.

Standard library only, so that asking the daemon costs a bare interpreter's start-up:
importing the engine (SQLAlchemy, SQLModel, libvirt) takes ~0.9 s on our lab hosts.
"""

from __future__ import annotations

import os
import sys

from snapgroup.cli.wire import (
    DEFAULT_SOCKET,
    NO_DAEMON_ENV,
    SOCKET_ENV,
    Frames,
    relevant_env,
    request_line,
)

TYPE_CHECKING = False  # not typing's: importing typing costs ~14 ms of start-up
if TYPE_CHECKING:
    import _socket
    from collections.abc import Sequence
    from typing import NoReturn, TextIO


def _lost(argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    """The daemon went away before the command's exit status: say so in the seed's
    error shape. The journal lets `snapgroup recover` finish whatever it had begun."""
    import json

    from snapgroup.domain.errors import InternalError  # stdlib-only module

    error = InternalError(
        "the snapgroup daemon closed the connection before the command finished; "
        "`snapgroup operations` shows what it was doing"
    )
    if "--json" in argv:
        json.dump({"error": error.to_dict()}, out, indent=2, ensure_ascii=False)
        out.write("\n")
    else:
        err.write(f"error {error.code}: {error.details}\n")
    return 1


class ReaderGone(Exception):
    """Whoever reads our stdout or stderr closed it (`snapgroup ... | head`)."""


def forward(
    argv: Sequence[str],
    *,
    out: TextIO,
    err: TextIO,
    path: str | None = None,
    environ: dict[str, str] | None = None,
) -> int | None:
    """argv's exit status, run by the daemon with its output written to out and err;
    None when there is no daemon or it declines: then run the command here."""
    env = dict(os.environ) if environ is None else environ
    if env.get(NO_DAEMON_ENV) == "1":
        return None
    address = path or env.get(SOCKET_ENV) or DEFAULT_SOCKET
    if not os.path.exists(address):  # no daemon: no socket made at all
        return None
    # _socket, not socket: socket's module (its enums, selectors) is ~6 ms of start-up.
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(address)
    except OSError:  # none listening (or not ours to use): nothing is lost
        sock.close()
        return None
    try:
        return _exchange(sock, argv, env, out, err)
    except (OSError, ValueError):  # after the request: the command may have run
        return _lost(argv, out, err)
    finally:
        sock.close()


def _exchange(
    sock: _socket.socket, argv: Sequence[str], env: dict[str, str], out: TextIO, err: TextIO
) -> int | None:
    sock.sendall(request_line(list(argv), relevant_env(env), (out.isatty(), err.isatty())))
    frames = Frames()
    while data := sock.recv(1 << 16):
        for kind, payload in frames.feed(data):
            if kind == "fallback":  # declined before running anything
                return None
            if kind == "exit":
                return int(payload)
            stream = out if kind == "out" else err
            try:
                stream.write(payload)
                stream.flush()
            except BrokenPipeError as gone:  # our reader went away, not the daemon
                raise ReaderGone from gone
    return _lost(argv, out, err)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return _run(args)
    except (BrokenPipeError, ReaderGone):
        _die_of_sigpipe()


def _run(args: list[str]) -> int:
    try:
        code = forward(args, out=sys.stdout, err=sys.stderr)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted (the daemon finishes what it had begun)\n")
        return 130
    if code is None and ("list" in args or "show" in args):
        from snapgroup.cli.quick import answer  # no engine when it is not needed

        code = answer(args, sys.stdout, sys.stderr, os.environ)
    if code is None and "backups" in args:
        from snapgroup.cli.quick_backups import answer as list_backups  # no argparse either

        code = list_backups(args, sys.stdout, sys.stderr, os.environ)
    if code is None:
        from snapgroup.cli.main import main as run_here

        code = run_here(args)
    sys.stdout.flush()  # here, not at exit, where a closed pipe is a printed traceback
    sys.stderr.flush()
    return code


def _die_of_sigpipe() -> NoReturn:
    """As coreutils do when the reader went away: no message, killed by SIGPIPE (status
    141 in a shell). Python ignores SIGPIPE, so the write failed instead; nobody reads
    what is left to write. A daemon finishes the command regardless."""
    import signal

    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGPIPE)
    os._exit(128 + signal.SIGPIPE)  # not reached: the signal ends the process first
