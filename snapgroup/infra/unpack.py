"""Writing a guest's files on the host, with care: what comes out of a guest is the
guest's, names and links included. A tree arrives as a tar stream (from the appliance)
and is unpacked member by member through tarfile's `data` filter: no absolute name, no
`..`, no link (symbolic or hard) that leads out of the target directory, no device
file, no setuid/setgid/sticky bit or group/other write bit, no owner taken from the
archive. A member the filter refuses is skipped and reported, never written; a name
that would pass through a symlink planted by an earlier member is refused the same
way (the filter resolves the path on disk). A single file is created with O_EXCL and
O_NOFOLLOW: nothing is overwritten and no link is followed.
"""

from __future__ import annotations

import contextlib
import decimal
import io
import os
import stat
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from snapgroup.domain.errors import OperationError

# What the data filter leaves of a mode: no setuid/setgid/sticky, no group/other write.
SAFE_MODE = 0o755


@dataclass
class Unpacked:
    files: int = 0  # regular files written
    bytes: int = 0
    directories: int = 0
    links: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (member, why)


class _ChunkReader(io.RawIOBase):
    """A readable file over an iterator of byte strings (tarfile's stream mode)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def unpack_tar(chunks: Iterable[bytes], dest: str) -> Unpacked:
    """Unpack a tar stream into the existing directory `dest` (made by the caller,
    empty). Directories keep their mtime and (safe) mode, files their mtime and mode,
    symlinks that stay inside `dest` are made as links. Returns what was written and
    what was skipped, with why."""
    report = Unpacked()
    root = os.path.realpath(dest)
    times: list[tuple[str, int]] = []  # each member made, and its mtime to the nanosecond

    def guard(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        try:
            safe = tarfile.data_filter(member, path)
        except tarfile.FilterError as exc:
            report.skipped.append((member.name, str(exc)))
            return None
        if safe.isdir():  # the data filter drops a directory's mode: keep a safe one
            safe = safe.replace(mode=(member.mode & SAFE_MODE) | stat.S_IRWXU, deep=False)
        times.append((safe.name, _mtime_ns(member)))
        if safe.isreg():
            report.files += 1
            report.bytes += safe.size
        elif safe.isdir():
            report.directories += 1
        else:
            report.links += 1
        return safe

    reader = io.BufferedReader(_ChunkReader(chunks), buffer_size=1 << 20)
    try:
        with tarfile.open(fileobj=reader, mode="r|") as archive:
            archive.extractall(root, filter=guard)
        while reader.read(1 << 20):  # the archive's padding: the stream is read to its end
            pass
    except tarfile.TarError as exc:
        raise OperationError(f"the guest's tar stream is damaged: {exc}") from exc
    # tarfile sets times from a float (~0.2 us off at today's epoch): set them exact,
    # deepest first, never through a link (the members were checked, not trusted).
    for name, ns in reversed(times):
        with contextlib.suppress(FileNotFoundError):
            os.utime(os.path.join(root, name), ns=(ns, ns), follow_symlinks=False)
    return report


def _mtime_ns(member: tarfile.TarInfo) -> int:
    """A pax header's exact decimal mtime (GNU tar writes one with --xattrs), else the
    header's whole seconds."""
    text = member.pax_headers.get("mtime")
    if text:
        try:
            return int(decimal.Decimal(text).scaleb(9).to_integral_value(decimal.ROUND_FLOOR))
        except decimal.InvalidOperation:
            pass
    return int(member.mtime) * 1_000_000_000


def write_file(chunks: Iterable[bytes], path: str, *, mode: int, mtime_ns: int) -> int:
    """A new regular file at `path` (never overwritten, no link followed), its bytes,
    then its mode (safe bits only) and mtime. Removed again when writing fails."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise OperationError(f"{path} already exists; refusing to overwrite") from None
    except OSError as exc:
        raise OperationError(f"cannot create {path}: {exc.strerror}") from exc
    written = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
                written += len(chunk)
            out.flush()
            os.fchmod(out.fileno(), (mode & SAFE_MODE) | stat.S_IRUSR | stat.S_IWUSR)
            os.utime(out.fileno(), ns=(mtime_ns, mtime_ns))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return written


def new_directory(path: str) -> None:
    """Make `path` (a new directory, 0700 while it is filled); refuse an existing one."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        raise OperationError(f"{path} already exists; refusing to overwrite") from None
    except OSError as exc:
        raise OperationError(f"cannot create {path}: {exc.strerror}") from exc


def finish_directory(path: str, *, mode: int, mtime_ns: int) -> None:
    """A filled directory's own mode (safe bits, owner rwx) and mtime, set last."""
    os.chmod(path, (mode & SAFE_MODE) | stat.S_IRWXU, follow_symlinks=False)
    os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
