"""The one way snapgroup runs an external tool: an argv list, never a shell.

Every failure (missing binary, non-zero exit, timeout) becomes a SnapgroupError of the
caller's choosing, so each adapter keeps its port's error contract.
"""

from __future__ import annotations

import codecs
import errno
import logging
import os
import re
import selectors
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO

from snapgroup.domain.errors import ImageToolError, SnapgroupError

log = logging.getLogger(__name__)

_READ_SIZE = 4096
_STDERR_KEEP = 2000  # characters of stderr kept in an error's details
# Progress meters redraw one line with \r; treat it as a line end like \n.
_LINE_END = re.compile(r"[\r\n]")
# Children die with us: a snapgroup killed mid-copy must not leave its qemu-img writing on
# while the next command's recovery removes or redoes that work. setpriv (util-linux, in
# every Debian) sets PR_SET_PDEATHSIG and execs the tool; a pre-exec hook would not be
# safe in our threads. Without setpriv, tools run as they are.
_SETPRIV = shutil.which("setpriv")


class _LineSplitter:
    """Feeds complete, non-blank lines of a text stream to `on_line`."""

    def __init__(self, on_line: Callable[[str], None]) -> None:
        self._on_line: Callable[[str], None] | None = on_line
        self._pending = ""

    def feed(self, text: str) -> None:
        *lines, self._pending = _LINE_END.split(self._pending + text)
        for line in lines:
            self._emit(line)

    def close(self) -> None:
        self._emit(self._pending)
        self._pending = ""

    def _emit(self, line: str) -> None:
        line = line.strip()
        if not line or self._on_line is None:
            return
        try:
            self._on_line(line)
        except Exception:
            # Progress is advisory. Letting a callback bug kill qemu-img halfway through a
            # commit would leave the base half-merged, so log it and stop calling back.
            log.warning("line callback failed; no more lines will be passed", exc_info=True)
            self._on_line = None


class _TimedOut(Exception):
    pass


def _collect(
    proc: subprocess.Popen[bytes], deadline: float | None, splitter: _LineSplitter | None
) -> tuple[str, str]:
    """Read stdout and stderr together until both close (reading only one could block the
    tool on a full pipe of the other). os.read returns whatever is there, so progress
    arrives as it is printed rather than a buffer at a time."""
    assert proc.stdout is not None and proc.stderr is not None
    decoders = {
        fd: codecs.getincrementaldecoder("utf-8")(errors="replace")
        for fd in (proc.stdout.fileno(), proc.stderr.fileno())
    }
    chunks: dict[int, list[str]] = {fd: [] for fd in decoders}
    out_fd = proc.stdout.fileno()
    with selectors.DefaultSelector() as sel:
        for fd in decoders:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise _TimedOut
            for key, _ in sel.select(remaining):
                fd = int(key.fd)
                data = os.read(fd, _READ_SIZE)
                final = not data
                if final:
                    sel.unregister(fd)
                text = decoders[fd].decode(data, final=final)
                chunks[fd].append(text)
                if fd == out_fd and splitter is not None:
                    splitter.feed(text)
    if splitter is not None:
        splitter.close()
    remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
    try:
        proc.wait(remaining)
    except subprocess.TimeoutExpired:
        raise _TimedOut from None
    return "".join(chunks[out_fd]), "".join(chunks[proc.stderr.fileno()])


def _trim(stderr: str) -> str:
    stderr = stderr.strip()
    if not stderr:
        return "(no stderr)"
    # The last lines usually carry the fatal message; keep those when it is long.
    return stderr if len(stderr) <= _STDERR_KEEP else "..." + stderr[-_STDERR_KEEP:]


def run(
    argv: Sequence[str],
    *,
    timeout: float | None = None,
    on_line: Callable[[str], None] | None = None,
    error: type[SnapgroupError] = ImageToolError,
    ok_codes: tuple[int, ...] = (0,),
    env: Mapping[str, str] | None = None,
    pass_fds: Sequence[int] = (),
) -> str:
    """Run `argv` and return its stdout.

    `on_line` receives each stripped, non-blank stdout line as it arrives (a \\r ends a
    line too). Raises `error` when the binary cannot be started, exits non-zero or
    outlives `timeout` seconds (it is then killed); details name the tool, the exit code
    and the end of stderr. `ok_codes`: exit codes that are answers, not failures (qemu-img
    check exits 2 on corruptions with its report on stdout). `env`: variables set for the
    tool on top of ours; `pass_fds`: descriptors it inherits (a lock a daemon keeps).
    """
    tool, command, spawned = _prepare(argv, error)
    try:
        # A list argv and no shell: ';', '$(...)' and spaces stay literal arguments.
        proc = subprocess.Popen(  # noqa: S603
            spawned,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_environment(env),
            pass_fds=tuple(pass_fds),
        )
    except OSError as exc:  # PermissionError, ...
        raise error(f"{tool}: cannot run {command}: {exc.strerror or exc}") from exc

    deadline = None if timeout is None else time.monotonic() + timeout
    splitter = _LineSplitter(on_line) if on_line is not None else None
    try:
        stdout, stderr = _collect(proc, deadline, splitter)
    except _TimedOut:
        raise error(f"{tool}: timed out after {timeout}s and was killed: {command}") from None
    finally:
        # On timeout or an interrupt, never leave the child running or unreaped.
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()

    rc = proc.returncode
    if rc not in ok_codes:
        how = f"exit code {rc}" if rc > 0 else f"killed by signal {-rc}"
        raise error(f"{tool} failed ({how}): {_trim(stderr)} [command: {command}]")
    if stderr.strip():
        log.debug("%s stderr: %s", tool, stderr.strip())
    return stdout


def spawn(
    argv: Sequence[str],
    *,
    stderr: IO[bytes],
    env: Mapping[str, str] | None = None,
    error: type[SnapgroupError] = ImageToolError,
) -> subprocess.Popen[bytes]:
    """Start a tool that serves requests on its stdin/stdout for a while (the file
    browser's appliance driver); the caller talks to it and reaps it. Like run(): an
    argv list, no shell, and it dies with us (pdeathsig). stderr goes to `stderr` (a
    file: a pipe nobody reads would stall the tool)."""
    tool, command, spawned = _prepare(argv, error)
    try:
        return subprocess.Popen(  # noqa: S603
            spawned,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=_environment(env),
        )
    except OSError as exc:
        raise error(f"{tool}: cannot run {command}: {exc.strerror or exc}") from exc


def _prepare(argv: Sequence[str], error: type[SnapgroupError]) -> tuple[str, str, list[str]]:
    """The tool's name, the command as logged, and the argv to start (under setpriv)."""
    args = [str(a) for a in argv]
    if not args:
        raise error("no command given")
    tool = os.path.basename(args[0])
    command = shlex.join(args)
    log.debug("run: %s", command)
    binary = shutil.which(args[0])
    if binary is None:  # what Popen would say, said before setpriv could say it
        missing = FileNotFoundError(errno.ENOENT, "not found or not executable", args[0])
        raise error(f"{tool}: cannot run {command}: {missing.strerror}") from missing
    spawned = [_SETPRIV, "--pdeathsig", "KILL", "--", binary, *args[1:]] if _SETPRIV else args
    return tool, command, spawned


def _environment(extra: Mapping[str, str] | None) -> dict[str, str] | None:
    return None if extra is None else {**os.environ, **extra}
