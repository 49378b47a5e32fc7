"""A fake ports.GuestFiles: guest filesystems written into a fake image's clusters, so
each group and each backup shows the files of its point in time (the fake image tool's
chains do the rest). What a disk holds, by cluster value:

    cluster 0   "fs:ext4"              one filesystem on the whole disk (vdb)
                "parts:ext4,vfat"      a partition table: vdb1 ext4, vdb2 vfat
                "fs:ext4:damaged"      a filesystem that cannot be mounted
    other       "file:/etc/hosts=text"     a file of the (first) filesystem
                "file@2:/a/b=text"         a file of partition 2
                "link:/etc/current=hosts"  a symlink

Directories are implied by the paths. A file's mtime is 1_700_000_000 s plus its
cluster number, its mode 0644 (directories 0755). Every appliance opened is counted
(`launches`); mounts are recorded, nothing touches the host.
"""

from __future__ import annotations

import io
import os
import posixpath
import stat
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from snapgroup.domain.errors import FilesystemError, InvalidArgument, NotFound
from snapgroup.domain.guest_files import FileEntry, GuestDisk, GuestFilesystem

BASE_MTIME = 1_700_000_000
CHUNK = 5  # a file's bytes come in small chunks, as from a pipe


@dataclass
class _Node:
    mode: int
    mtime_ns: int
    data: bytes = b""
    target: str | None = None


@dataclass
class _Fs:
    info: GuestFilesystem
    damaged: bool
    nodes: dict[str, _Node] = field(default_factory=dict)


def _letter(index: int) -> str:
    return "abcdefghijklmnopqrstuvwxyz"[index]


def _parse(index: int, target: str, view: dict[int, str]) -> list[_Fs]:
    device = f"/dev/sd{_letter(index)}"
    head = view.get(0, "")
    found: list[_Fs] = []
    if head.startswith("fs:"):
        fstype, _, flag = head.removeprefix("fs:").partition(":")
        info = GuestFilesystem(target, device, "disk", (target,), fstype, 1 << 30)
        found.append(_Fs(info, flag == "damaged"))
    elif head.startswith("parts:"):
        whole = GuestFilesystem(target, device, "disk", (target,), "", 1 << 30, partitioned=True)
        found.append(_Fs(whole, False))
        for n, fstype in enumerate(head.removeprefix("parts:").split(","), start=1):
            info = GuestFilesystem(
                f"{target}{n}", f"{device}{n}", "partition", (target,), fstype, 1 << 29
            )
            found.append(_Fs(info, False))
    else:
        found.append(_Fs(GuestFilesystem(target, device, "disk", (target,), "", 1 << 30), False))
    for cluster, value in sorted(view.items()):
        kind, _, rest = value.partition(":")
        if kind.split("@")[0] not in ("file", "link") or "=" not in rest:
            continue
        number = int(kind.split("@")[1]) if "@" in kind else 1
        mountable = [f for f in found if f.info.mountable]
        if number > len(mountable):
            continue
        fs = mountable[number - 1]
        path, _, content = rest.partition("=")
        mtime = (BASE_MTIME + cluster) * 10**9
        parent = posixpath.dirname(path)
        while parent not in fs.nodes:
            fs.nodes[parent] = _Node(stat.S_IFDIR | 0o755, BASE_MTIME * 10**9)
            parent = posixpath.dirname(parent)
        if kind.startswith("link"):
            fs.nodes[path] = _Node(stat.S_IFLNK | 0o777, mtime, target=content)
        else:
            fs.nodes[path] = _Node(stat.S_IFREG | 0o644, mtime, data=content.encode())
    for fs in found:
        if fs.info.mountable:
            fs.nodes.setdefault("/", _Node(stat.S_IFDIR | 0o755, BASE_MTIME * 10**9))
    return found


class FakeGuestSession:
    def __init__(self, owner: FakeGuestFiles, disks: Sequence[GuestDisk]) -> None:
        self.owner = owner
        self.disks = tuple(disks)
        self.closed = False
        self._fs: dict[str, _Fs] = {}
        for index, disk in enumerate(disks):
            for fs in _parse(index, disk.target, owner.view(disk.path)):
                self._fs[fs.info.device] = fs

    def __enter__(self) -> FakeGuestSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.closed = True

    def filesystems(self) -> list[GuestFilesystem]:
        return [fs.info for fs in self._fs.values()]

    def _mounted(self, device: str) -> _Fs:
        fs = self._fs.get(device)
        if fs is None or fs.damaged or not fs.info.mountable:
            raise FilesystemError(f"mount_ro: {device}: wrong fs type, bad superblock")
        return fs

    def _node(self, device: str, path: str) -> _Node:
        node = self._mounted(device).nodes.get(path)
        if node is None:
            raise NotFound(f"lstatns: {path}: No such file or directory")
        return node

    def list_dir(self, device: str, path: str) -> list[FileEntry]:
        if not stat.S_ISDIR(self._node(device, path).mode):
            raise InvalidArgument(f"{path}: Not a directory")
        nodes = self._mounted(device).nodes
        return [
            _entry(posixpath.basename(p), n)
            for p, n in sorted(nodes.items())
            if p != "/" and posixpath.dirname(p) == path
        ]

    def stat(self, device: str, path: str) -> FileEntry:
        return _entry(posixpath.basename(path) or "/", self._node(device, path))

    def read_file(self, device: str, path: str) -> Iterator[bytes]:
        node = self._node(device, path)
        if not stat.S_ISREG(node.mode):
            raise InvalidArgument(f"{path}: not a regular file")
        data = node.data
        return iter([data[at : at + CHUNK] for at in range(0, len(data), CHUNK)])

    def read_tree(self, device: str, path: str) -> Iterator[bytes]:
        if not stat.S_ISDIR(self._node(device, path).mode):
            raise InvalidArgument(f"{path}: Not a directory")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as archive:
            for p, node in sorted(self._mounted(device).nodes.items()):
                if p != path and not p.startswith(path.rstrip("/") + "/"):
                    continue
                name = "." + p[len(path.rstrip("/")) :] if p != path else "."
                info = tarfile.TarInfo(name)
                info.mode, info.mtime = stat.S_IMODE(node.mode), node.mtime_ns // 10**9
                if stat.S_ISDIR(node.mode):
                    info.type = tarfile.DIRTYPE
                elif stat.S_ISLNK(node.mode):
                    info.type, info.linkname = tarfile.SYMTYPE, node.target or ""
                else:
                    info.size = len(node.data)
                archive.addfile(info, io.BytesIO(node.data) if info.isreg() else None)
        data = buf.getvalue()
        return iter([data[at : at + 4096] for at in range(0, len(data), 4096)])


def _entry(name: str, node: _Node) -> FileEntry:
    return FileEntry(name, node.mode, len(node.data), node.mtime_ns, target=node.target)


class FakeGuestFiles:
    """ports.GuestFiles over `view`: a disk file's guest-visible clusters (for example
    FakeImageTool.read, which follows the file's chain)."""

    def __init__(self, view: Callable[[str], dict[int, str]]) -> None:
        self.view = view
        self.launches = 0
        self.sessions: list[FakeGuestSession] = []
        self.mounts: dict[str, tuple[tuple[GuestDisk, ...], str, int | None]] = {}

    def open(self, disks: Sequence[GuestDisk]) -> FakeGuestSession:
        self.launches += 1
        session = FakeGuestSession(self, disks)
        self.sessions.append(session)
        return session

    def mount(
        self, disks: Sequence[GuestDisk], device: str, mountpoint: str, *, keep_fd: int | None
    ) -> None:
        if mountpoint in self.mounts:
            raise InvalidArgument(f"{mountpoint} is a mountpoint already")
        self.launches += 1
        FakeGuestSession(self, disks)._mounted(device)
        # The serving process keeps the descriptor it inherits until it ends (kill).
        kept = None if keep_fd is None else os.dup(keep_fd)
        self.mounts[mountpoint] = (tuple(disks), device, kept)

    def unmount(self, mountpoint: str) -> None:
        mounted = self.mounts.pop(mountpoint, None)
        if mounted is None:
            raise InvalidArgument(f"{mountpoint} is not a snapgroup mount")
        self.kill(mountpoint, mounted)

    def close(self) -> None:
        """Every serving process ends (a test's teardown): no mount outlives its test."""
        for mountpoint in list(self.mounts):
            self.kill(mountpoint)

    def kill(
        self, mountpoint: str, mounted: tuple[tuple[GuestDisk, ...], str, int | None] | None = None
    ) -> None:
        """The process serving the mount dies (kill -9): what it kept open is closed;
        the mount stays listed (a dead FUSE mount stays until unmounted)."""
        disks, device, kept = mounted or self.mounts[mountpoint]
        if kept is not None:
            os.close(kept)
        if mounted is None:
            self.mounts[mountpoint] = (disks, device, None)
