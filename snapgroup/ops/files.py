"""Browse and extract the files of any group or any backup (`snapgroup files`,
`snapgroup extract`, REST downloads), without touching the VM: its disks as they were
at that point in time are opened read-only by the appliance (ports.GuestFiles), one
appliance per call. Nothing is ever written into a group or a backup; on the host only
the extraction's new files under --to, through infra/unpack.py."""

from __future__ import annotations

import dataclasses
import os
import posixpath
import shutil
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from typing import Any

from snapgroup.domain.errors import InvalidArgument, OperationError
from snapgroup.domain.guest_files import FileEntry, GuestFilesystem, guest_path
from snapgroup.infra.unpack import (
    finish_directory,
    new_directory,
    unpack_tar,
    write_file,
)
from snapgroup.ops.context import OpContext
from snapgroup.ops.guest_sources import (
    FilesSource,
    on_disk,
    only_disk,
    open_filesystem,
    resolve,
)
from snapgroup.ports import GuestFiles, GuestSession


@dataclass(frozen=True)
class Listing:
    source: dict[str, Any]
    filesystems: list[GuestFilesystem]  # no path asked: the disks' filesystems
    filesystem: GuestFilesystem | None = None  # a path asked: where it was read
    path: str | None = None
    entries: list[FileEntry] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        if self.filesystem is None:
            return {"source": self.source, "filesystems": [f.to_dict() for f in self.filesystems]}
        return {
            "source": self.source,
            "filesystem": self.filesystem.name,
            "path": self.path,
            "entries": [e.to_dict() for e in self.entries],
        }


def browse(
    ctx: OpContext,
    guest: GuestFiles,
    source: FilesSource,
    *,
    disk: str | None = None,
    fs: str | None = None,
    path: str | None = None,
) -> Listing:
    """No `path` (and no `fs`): the disks' partitions, filesystems and LVM volumes.
    Else the directory `path` of a filesystem (`fs`, or the only one there is)."""
    opened = resolve(ctx, source)
    only_disk(opened.disks, disk)
    wanted = guest_path(path) if path is not None else ("/" if fs is not None else None)
    with opened.lock, guest.open(opened.disks) as session:
        if wanted is None:
            return Listing(opened.describe, on_disk(session.filesystems(), disk))
        chosen, entry = open_filesystem(session, opened.disks, wanted, disk=disk, fs=fs)
        if entry.type == "directory":
            entries = session.list_dir(chosen.device, wanted)
        else:
            entries = [replace_name(entry, posixpath.basename(wanted))]
        return Listing(opened.describe, [], chosen, wanted, entries)


def replace_name(entry: FileEntry, name: str) -> FileEntry:
    return dataclasses.replace(entry, name=name)


@dataclass(frozen=True)
class Extracted:
    path: str  # in the guest
    to: str  # on the host
    type: str
    files: int
    bytes: int
    skipped: list[tuple[str, str]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "to": self.to,
            "type": self.type,
            "files": self.files,
            "bytes": self.bytes,
            "skipped": [{"member": m, "reason": r} for m, r in self.skipped],
        }


def extract(
    ctx: OpContext,
    guest: GuestFiles,
    source: FilesSource,
    *,
    paths: Sequence[str],
    to: str,
    disk: str | None = None,
    fs: str | None = None,
) -> list[Extracted]:
    """Copy each path (a file, or a directory's whole tree) into `to` as
    `to/<its name>`, with its mtime and mode (no setuid/setgid/sticky bit, no
    group/other write, owned by the caller). Nothing existing is overwritten; a failure
    removes what this call wrote."""
    if not paths:
        raise InvalidArgument("extract needs at least one PATH")
    wanted = [guest_path(p) for p in paths]
    directory = os.path.abspath(to)
    if not os.path.isdir(directory):
        raise InvalidArgument(f"--to {directory} is not a directory")
    # "/" lands on the filesystem's (or disk's) name.
    names = [posixpath.basename(p) or (fs or disk or "root").replace("/", "-") for p in wanted]
    if len(set(names)) != len(names):
        raise InvalidArgument(f"two paths would land on one name in {directory}")
    outs = [os.path.join(directory, n) for n in names]
    for out in outs:  # before any appliance is started
        if os.path.lexists(out):
            raise OperationError(f"{out} already exists; refusing to overwrite")
    opened = resolve(ctx, source)
    only_disk(opened.disks, disk)
    made: list[str] = []
    try:
        with opened.lock, guest.open(opened.disks) as session:
            chosen, _ = open_filesystem(session, opened.disks, wanted[0], disk=disk, fs=fs)
            return [
                _extract_one(session, chosen.device, p, out, made)
                for p, out in zip(wanted, outs, strict=True)
            ]
    except BaseException:
        for out in made:  # all or nothing
            if os.path.isdir(out) and not os.path.islink(out):
                shutil.rmtree(out, ignore_errors=True)
            else:
                _unlink_quietly(out)
        raise


def _extract_one(
    session: GuestSession, device: str, path: str, out: str, made: list[str]
) -> Extracted:
    entry: FileEntry = session.stat(device, path)
    if entry.type == "directory":
        new_directory(out)
        made.append(out)
        report = unpack_tar(session.read_tree(device, path), out)
        finish_directory(out, mode=entry.mode, mtime_ns=entry.mtime_ns)
        return Extracted(path, out, "directory", report.files, report.bytes, report.skipped)
    if entry.type == "file":
        made.append(out)
        size = write_file(
            session.read_file(device, path), out, mode=entry.mode, mtime_ns=entry.mtime_ns
        )
        return Extracted(path, out, "file", 1, size, [])
    why = f"a {entry.type}" + (f" to {entry.target}" if entry.target else "")
    return Extracted(path, out, entry.type, 0, 0, [(path, f"{why}: not extracted")])


def _unlink_quietly(path: str) -> None:
    with suppress(OSError):
        os.unlink(path)


@dataclass
class Download:
    """One path's content for a client: a file's bytes, or a directory as a tar stream.
    `chunks` holds the appliance (and the source's lock) until it is read to its end or
    closed."""

    name: str
    type: str  # file, directory
    size: int | None  # a file's; None for a tree
    mtime_ns: int
    chunks: Iterator[bytes]


def download(
    ctx: OpContext,
    guest: GuestFiles,
    source: FilesSource,
    *,
    path: str,
    disk: str | None = None,
    fs: str | None = None,
) -> Download:
    wanted = guest_path(path)
    opened = resolve(ctx, source)
    only_disk(opened.disks, disk)
    stack = ExitStack()
    try:
        stack.enter_context(opened.lock)
        session = stack.enter_context(guest.open(opened.disks))
        chosen, entry = open_filesystem(session, opened.disks, wanted, disk=disk, fs=fs)
        if entry.type == "directory":
            chunks = session.read_tree(chosen.device, wanted)
        elif entry.type == "file":
            chunks = session.read_file(chosen.device, wanted)
        else:
            raise InvalidArgument(f"{wanted} is a {entry.type}: only files and directories")
    except BaseException:
        stack.close()
        raise
    name = posixpath.basename(wanted) or chosen.name.replace("/", "-")
    size = entry.size if entry.type == "file" else None
    return Download(name, entry.type, size, entry.mtime_ns, _holding(stack, chunks))


def _holding(stack: ExitStack, chunks: Iterator[bytes]) -> Iterator[bytes]:
    with stack:
        yield from chunks
