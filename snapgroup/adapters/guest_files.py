"""ports.GuestFiles on libguestfs: the only module that runs the appliance (through
guestfs_agent.py, run by Debian's python3 with python3-guestfs) and guestmount.

Why an appliance: a guest's filesystem is the guest's, and a crafted one is an attack
on whatever kernel parses it. libguestfs parses it in a small VM of its own (the fixed
appliance `make appliance` builds: lab/build_appliance.py), so a hostile image can at
worst crash that VM; the host kernel never mounts it. Every disk is added read-only
(libguestfs puts a throwaway overlay above it), so nothing is ever written to a group's
or a backup's files, even when a journal is replayed to mount a crash-consistent one.

Why a driver process and not `guestfish --listen`: the guestfish server exits on the
first failed command (a path that is not there), `-cmd` hides the failure (exit 0), each
`--remote` call costs a process (~80 ms here), and a server whose caller was killed
lives on with its appliance. The driver answers typed errors, one request at a time, in
~1 ms, and ends with its stdin: a killed snapgroup leaves no appliance behind.

Where the appliance is: SNAPGROUP_APPLIANCE (default /var/lib/snapgroup/appliance),
with appliance.json saying whether KVM can run it here (else TCG).
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from subprocess import Popen
from typing import IO, Any

from snapgroup.adapters.runner import run, spawn
from snapgroup.domain.errors import (
    FilesystemError,
    GuestToolError,
    InvalidArgument,
    NotFound,
    SnapgroupError,
)
from snapgroup.domain.guest_files import FileEntry, GuestDisk, GuestFilesystem, filesystem_name

DEFAULT_APPLIANCE = "/var/lib/snapgroup/appliance"
APPLIANCE_ENV = "SNAPGROUP_APPLIANCE"
PYTHON_ENV = "SNAPGROUP_GUESTFS_PYTHON"  # a python3 with the guestfs module
AGENT = Path(__file__).with_name("guestfs_agent.py")
_FRAME = struct.Struct(">I")
_STDERR_KEEP = 1500
MOUNT_TIMEOUT_S = 600.0  # guestmount returns once the appliance has mounted the filesystem


def appliance_dir() -> str:
    return os.environ.get(APPLIANCE_ENV) or DEFAULT_APPLIANCE


def appliance_env(directory: str | None = None) -> dict[str, str]:
    """The variables libguestfs needs to run our fixed appliance; GuestToolError when
    it was not built."""
    where = Path(directory or appliance_dir())
    try:
        config = json.loads((where / "appliance.json").read_text())
    except (OSError, ValueError):
        raise GuestToolError(
            f"no file browser appliance at {where}: build it with `make appliance` "
            f"(or point {APPLIANCE_ENV} at one)"
        ) from None
    env = {"LIBGUESTFS_PATH": str(where), "LIBGUESTFS_BACKEND": "direct"}
    if config.get("tcg") and "LIBGUESTFS_BACKEND_SETTINGS" not in os.environ:
        env["LIBGUESTFS_BACKEND_SETTINGS"] = "force_tcg"
    return env


class LibguestfsFiles:
    """ports.GuestFiles."""

    def __init__(self, appliance: str | None = None, python: str | None = None) -> None:
        self.appliance = appliance
        self.python = python or os.environ.get(PYTHON_ENV) or "/usr/bin/python3"

    def open(self, disks: Sequence[GuestDisk]) -> LibguestfsSession:
        return LibguestfsSession(disks, appliance_env(self.appliance), self.python)

    def mount(
        self, disks: Sequence[GuestDisk], device: str, mountpoint: str, *, keep_fd: int | None
    ) -> None:
        target = os.path.abspath(mountpoint)
        if not os.path.isdir(target):
            raise InvalidArgument(f"mountpoint {target} is not a directory")
        if _mount_type(target) is not None:
            raise InvalidArgument(f"{target} is a mountpoint already")
        argv = ["guestmount", "--ro"]
        for disk in disks:
            argv += ["--format=" + disk.format, "-a", disk.path]
        argv += ["-m", device, target]
        run(
            argv,
            env=appliance_env(self.appliance),
            error=GuestToolError,
            timeout=MOUNT_TIMEOUT_S,
            pass_fds=() if keep_fd is None else (keep_fd,),
        )

    def unmount(self, mountpoint: str) -> None:
        target = os.path.abspath(mountpoint)
        if _mount_type(target) != "fuse":
            raise InvalidArgument(f"{target} is not a snapgroup mount (no FUSE mount there)")
        run(["guestunmount", target], error=GuestToolError, timeout=60.0)


def _mount_type(path: str) -> str | None:
    """The filesystem type mounted exactly at `path` (None: not a mountpoint)."""
    found = None
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split()
            point = fields[4].encode().decode("unicode_escape")  # \040 for a space
            if point == path:
                found = fields[fields.index("-") + 1]
    return found


class LibguestfsSession:
    """ports.GuestSession: one driver process and its appliance."""

    def __init__(self, disks: Sequence[GuestDisk], env: dict[str, str], python: str) -> None:
        if not disks:
            raise InvalidArgument("no disk to open")
        self.targets = tuple(d.target for d in disks)
        self._log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        self._proc: Popen[bytes] | None = spawn(
            [python, "-I", str(AGENT)], stderr=self._log, env=env, error=GuestToolError
        )
        self._filesystems: list[GuestFilesystem] | None = None
        self._streaming = False  # a stream's frames are still on the wire
        try:
            doc = {"disks": [{"path": d.path, "format": d.format} for d in disks]}
            self._send(doc)
            self._reply()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> LibguestfsSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.close()  # the driver shuts the appliance down and exits
                proc.wait(timeout=30)
            except (OSError, TimeoutError, Exception):
                proc.kill()
                proc.wait()
            proc.stdout.close()
        self._log.close()

    # requests ---------------------------------------------------------------------------

    def filesystems(self) -> list[GuestFilesystem]:
        if self._filesystems is None:
            self._send({"op": "inventory"})
            self._filesystems = [self._filesystem(e) for e in self._reply()]
        return list(self._filesystems)

    def _filesystem(self, entry: dict[str, Any]) -> GuestFilesystem:
        return GuestFilesystem(
            name=filesystem_name(entry["device"], self.targets),
            device=entry["device"],
            kind=entry["kind"],
            disks=tuple(filesystem_name(d, self.targets) for d in entry["disks"]),
            fstype=entry["fstype"],
            size=int(entry.get("size") or 0),
            label=entry.get("label") or "",
            uuid=entry.get("uuid") or "",
            partitioned=bool(entry.get("partitioned")),
        )

    def list_dir(self, device: str, path: str) -> list[FileEntry]:
        self._send({"op": "ls", "device": device, "path": path})
        return [_entry(e) for e in self._reply()]

    def stat(self, device: str, path: str) -> FileEntry:
        self._send({"op": "stat", "device": device, "path": path})
        return _entry(self._reply())

    def read_file(self, device: str, path: str) -> Iterator[bytes]:
        return self._stream({"op": "download", "device": device, "path": path})

    def read_tree(self, device: str, path: str) -> Iterator[bytes]:
        return self._stream({"op": "tar_out", "device": device, "path": path})

    def _stream(self, request: dict[str, Any]) -> Iterator[bytes]:
        self._send(request)
        self._reply()  # "stream": the checks passed; raises otherwise, before any byte
        self._streaming = True
        return self._frames()

    def _frames(self) -> Iterator[bytes]:
        finished = False
        try:
            out = self._stdout()
            while True:
                size = _FRAME.unpack(_exactly(out, _FRAME.size, self))[0]
                if size == 0:
                    break
                yield _exactly(out, size, self)
            self._streaming = False
            self._reply()  # "done", or why the stream stopped short
            finished = True
        finally:
            if not finished:  # abandoned or broken midway: the driver is out of step
                self._kill()

    # the wire ---------------------------------------------------------------------------

    def _send(self, doc: dict[str, Any]) -> None:
        if self._streaming:  # a stream left unread: its frames would be read as replies
            self._kill()
            raise GuestToolError("the previous file stream of this session was not read")
        proc = self._alive()
        assert proc.stdin is not None
        try:
            proc.stdin.write(json.dumps(doc).encode() + b"\n")
            proc.stdin.flush()
        except OSError:
            raise self._died() from None

    def _reply(self) -> Any:
        line = self._stdout().readline()
        if not line:
            raise self._died()
        doc = json.loads(line)
        if "ok" in doc:
            return doc["ok"]
        raise _error(str(doc.get("error")), str(doc.get("kind")))

    def _stdout(self) -> IO[bytes]:
        proc = self._alive()
        assert proc.stdout is not None
        return proc.stdout

    def _alive(self) -> Popen[bytes]:
        if self._proc is None:
            raise GuestToolError("the appliance session is closed")
        return self._proc

    def _died(self) -> SnapgroupError:
        self._kill()
        return GuestToolError(f"the appliance stopped: {self.stderr_tail()}")

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()

    def stderr_tail(self) -> str:
        try:
            self._log.seek(0, os.SEEK_END)
            size = self._log.tell()
            self._log.seek(max(0, size - _STDERR_KEEP))
            text = self._log.read().decode(errors="replace").strip()
        except (OSError, ValueError):
            return "(no log)"
        return text or "(no message)"


def _exactly(out: IO[bytes], size: int, session: LibguestfsSession) -> bytes:
    data = out.read(size)
    if len(data) != size:
        raise session._died()
    return data


def _entry(doc: dict[str, Any]) -> FileEntry:
    return FileEntry(
        name=str(doc["name"]),
        st_mode=int(doc["mode"]),
        size=int(doc["size"]),
        mtime_ns=int(doc["mtime_ns"]),
        uid=int(doc["uid"]),
        gid=int(doc["gid"]),
        target=doc.get("target"),
    )


def _error(message: str, kind: str) -> SnapgroupError:
    if kind == "notfound":
        return NotFound(message)
    if kind in ("notdir", "isdir", "invalid"):
        return InvalidArgument(message)
    if kind == "mount":
        return FilesystemError(
            f"the appliance cannot mount it (a damaged superblock, or not a filesystem it "
            f"knows): {message}"
        )
    return GuestToolError(message)
