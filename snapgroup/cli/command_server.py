"""The daemon's side of snapgroup.cli.launch: one Unix socket, one thread a command.

A client sends one line of JSON, {"argv": [...], "env": {...}, "tty": [out, err]}, and
reads frames back (wire.py): "out" and "err" as the command writes them, then "exit"
with its status; or a single "fallback" with a reason when the daemon declines, before
anything has run, so the client runs the command itself. The daemon declines whatever it
cannot run exactly as the client would have: another store or libvirt URI, another
SNAPGROUP_*/LIBVIRT_* environment, a command that reads the terminal or serves, --verbose
(its log belongs on the client's terminal), a relative path (the client's cwd is not
ours: a command names its path arguments in its `paths` default), and anything argparse
would answer itself (usage errors, --help).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TextIO, cast

from snapgroup.api import DEFAULT_URI, Engine
from snapgroup.cli.commands import build_parser, execute
from snapgroup.cli.context import Context
from snapgroup.cli.wire import MAX_FRAME, NO_DAEMON_ENV, SOCKET_ENV, encode, relevant_env
from snapgroup.domain.errors import OperationError
from snapgroup.store.db import DEFAULT_DB_URL

log = logging.getLogger("snapgroup.daemon")

# Commands that serve, or read the client's terminal: always run by the client.
# The backup commands run here when their paths are absolute (see admit).
LOCAL_COMMANDS = frozenset(
    {"serve", "daemon", "account", "install-units"}  # paths: the cwd
    | {"files", "extract", "mount", "umount"}  # paths; an appliance for seconds
)
# Compared once resolved (URI, URL), or only about reaching the daemon at all.
RESOLVED_ENV = frozenset({"SNAPGROUP_DB", "LIBVIRT_DEFAULT_URI", SOCKET_ENV, NO_DAEMON_ENV})


class Declined(Exception):
    """The client runs this invocation itself; the reason is logged."""


class _QuietParser(argparse.ArgumentParser):
    """The command line's own parser, but whatever argparse would print and exit on
    (an error, --help) is left to the client, whose terminal it belongs on."""

    def _print_message(self, message: str, file: Any = None) -> None:
        pass

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise Declined("argparse answers it")

    def error(self, message: str) -> NoReturn:
        raise Declined(f"usage: {message}")


class _Frames(io.StringIO):
    """A command's stdout or stderr for the client, buffered as a pipe is (json.dump
    writes a document in thousands of pieces): sent on flush(), when the buffer fills,
    and when the command ends. A client that went away (Ctrl-C) does not stop the
    command: it finishes, as in libvirtd."""

    LIMIT = 1 << 16

    def __init__(self, send: Callable[[dict[str, Any]], None], key: str, tty: bool) -> None:
        super().__init__()
        self._send, self._key, self._tty = send, key, tty
        self._parts: list[str] = []
        self._size = 0

    def write(self, s: str) -> int:
        self._parts.append(s)
        self._size += len(s)
        if self._size >= self.LIMIT:
            self.flush()
        return len(s)

    def flush(self) -> None:
        if self._size:
            text = "".join(self._parts)
            self._parts, self._size = [], 0
            self._send({self._key: text})

    def isatty(self) -> bool:
        return self._tty


class _Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.gone = False
        self._lock = threading.Lock()  # progress may be written from a job's thread

    def send(self, message: dict[str, Any]) -> None:
        with self._lock:
            if self.gone:
                return
            try:
                self.sock.sendall(encode(message))
            except OSError:
                self.gone = True

    def peer_uid(self) -> int:
        creds = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return int(struct.unpack("3i", creds)[1])

    def request(self) -> dict[str, Any]:
        with self.sock.makefile("rb") as reader:
            line = reader.readline(MAX_FRAME)
        try:
            request = json.loads(line)
            argv, env, tty = request["argv"], request["env"], request["tty"]
        except (ValueError, KeyError, TypeError) as exc:
            raise Declined(f"unreadable request: {exc}") from exc
        ok = (
            isinstance(argv, list)
            and all(isinstance(a, str) for a in argv)
            and isinstance(env, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
            and isinstance(tty, list)
            and len(tty) == 2
        )
        if not ok:
            raise Declined("unreadable request")
        return {"argv": argv, "env": env, "tty": [bool(t) for t in tty]}


class CommandServer:
    """Runs `snapgroup` commands for clients on this host, each on an Engine that
    shares this daemon's libvirt connection, image tool and store (`engine_for(wait)`
    gives one with the client's --wait)."""

    def __init__(
        self,
        listener: socket.socket,
        *,
        connect: str,
        db: str,
        engine_for: Callable[[float], Engine],
    ) -> None:
        self.listener = listener
        self.connect, self.db = connect, db
        self.engine_for = engine_for
        self._parser = build_parser(_QuietParser)
        self._parse_lock = threading.Lock()
        self._workers: set[threading.Thread] = set()
        self._stopping = False

    def serve_forever(self) -> None:
        """Until stop() or a signal's exception (SIGTERM, Ctrl-C); then lets running
        commands finish before returning."""
        try:
            while True:
                try:
                    sock, _ = self.listener.accept()
                except OSError:
                    if self._stopping:
                        return
                    raise
                worker = threading.Thread(target=self._serve, args=(sock,), daemon=True)
                self._workers.add(worker)
                worker.start()
        finally:
            self.listener.close()
            running = [w for w in self._workers if w.is_alive()]
            if running:
                log.warning("waiting for %d running command(s) to finish", len(running))
            for worker in running:
                worker.join()

    def stop(self) -> None:
        """From another thread: no new clients; serve_forever returns once running
        commands finish."""
        self._stopping = True
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept

    def _serve(self, sock: socket.socket) -> None:
        conn = _Connection(sock)
        try:
            with sock:
                self._serve_one(conn)
        finally:
            self._workers.discard(threading.current_thread())

    def _serve_one(self, conn: _Connection) -> None:
        try:
            if conn.peer_uid() != os.geteuid():
                raise Declined("another user: runs with its own rights")
            request = conn.request()
            args = self.admit(request["argv"], request["env"])
        except Declined as why:
            log.info("declined: %s", why)
            conn.send({"fallback": str(why)})
            return
        except OSError:
            return
        out_tty, err_tty = request["tty"]
        out = _Frames(conn.send, "out", out_tty)
        err = _Frames(conn.send, "err", err_tty)
        started = time.monotonic()
        try:
            code = execute(
                args, out=cast(TextIO, out), err=cast(TextIO, err), context_factory=self._context
            )
        except BaseException:  # execute keeps the seed's error shape; this is a last resort
            log.exception("command failed")
            code = 1
        out.flush()
        err.flush()
        log.info("%s: exit %d in %.0f ms", args.command, code, 1000 * (time.monotonic() - started))
        conn.send({"exit": code})

    def admit(self, argv: list[str], env: dict[str, str]) -> argparse.Namespace:
        """The parsed arguments, if this daemon runs them exactly as the client would."""
        ours = relevant_env(os.environ)
        for key in sorted((set(env) | set(ours)) - RESOLVED_ENV):
            if env.get(key) != ours.get(key):
                raise Declined(f"{key} differs from the daemon's")
        with self._parse_lock:
            args = self._parser.parse_args(argv)
        if args.command in LOCAL_COMMANDS:
            raise Declined(f"{args.command} runs in the client")
        if args.verbose:
            raise Declined("--verbose logs on the client's terminal")
        for dest in getattr(args, "paths", ()):
            path = getattr(args, dest)
            if path is not None and not os.path.isabs(path):
                raise Declined(f"{path}: a relative path is the client's")
        connect = args.connect or env.get("LIBVIRT_DEFAULT_URI") or DEFAULT_URI
        db = args.db or env.get("SNAPGROUP_DB") or DEFAULT_DB_URL
        if connect != self.connect:
            raise Declined(f"libvirt {connect}, not the daemon's {self.connect}")
        if db != self.db:
            raise Declined("another store than the daemon's")
        return args

    def _context(self, args: argparse.Namespace) -> Context:
        wait: float = args.wait
        return Context(make_engine=lambda: self.engine_for(wait), as_json=args.json)


def listen(path: Path) -> socket.socket:
    """A Unix socket only its owner can use (0600 in a 0700 directory); a stale one
    left by a killed daemon is replaced, a live one is an error."""
    path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    if path.exists() or path.is_symlink():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()
        else:
            raise OperationError(f"a snapgroup daemon already listens on {path}")
        finally:
            probe.close()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # created 0600: no window where another user could connect
    try:
        listener.bind(str(path))
    finally:
        os.umask(old)
    listener.listen(64)
    return listener
