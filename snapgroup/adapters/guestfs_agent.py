"""The appliance's driver: a small program run by Debian's python3 (which has the
libguestfs bindings, python3-guestfs), never imported by snapgroup itself.

    /usr/bin/python3 -I guestfs_agent.py  < requests  > replies

adapters/guest_files.py starts it, one per session. It opens every disk given in the
first request read-only (libguestfs puts a throwaway overlay above each: the appliance
may replay a journal, nothing reaches the file), launches the appliance, and then
answers one request at a time. The guest's filesystems are parsed only by the
appliance's kernel, inside its VM: this process sees names, numbers and bytes.

Protocol (stdin/stdout): a request is one JSON line `{"op": ..., ...}`; a reply one JSON
line, `{"ok": value}` or `{"error": message, "kind": k}` (kind: notfound, notdir,
isdir, mount, invalid, tool). `download` and `tar_out` reply `{"ok": "stream"}`, then
frames (a 4-byte big-endian length and that many bytes; length 0 ends the stream), then
a final reply line: whether the stream was whole. End of stdin closes the appliance, so
a killed snapgroup never leaves one running (and the runner's pdeathsig kills us).
Anything libguestfs prints goes to stderr: stdout carries replies only.

Standard library and `guestfs` only: it runs outside snapgroup's environment.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import os
import stat
import struct
import sys
import threading
from collections.abc import Callable
from typing import Any, BinaryIO

FRAME = struct.Struct(">I")
CHUNK = 1 << 20
BATCH = 500  # names per lstatnslist call (the protocol caps a message at 4 MiB)


class Failure(Exception):
    def __init__(self, message: str, kind: str = "tool") -> None:
        super().__init__(message)
        self.kind = kind


def _kind(message: str) -> str:
    if "No such file or directory" in message:
        return "notfound"
    if "Not a directory" in message:
        return "notdir"
    if "Is a directory" in message:
        return "isdir"
    return "tool"


class Agent:
    def __init__(self, g: Any, out: BinaryIO) -> None:
        self.g = g
        self.out = out
        self.mounted: str | None = None

    # replies -----------------------------------------------------------------------------

    def reply(self, doc: dict[str, Any]) -> None:
        self.out.write(json.dumps(doc).encode() + b"\n")
        self.out.flush()

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RuntimeError as exc:
            raise Failure(str(exc), _kind(str(exc))) from None

    # requests ----------------------------------------------------------------------------

    def inventory(self, _req: dict[str, Any]) -> list[dict[str, Any]]:
        g = self.g
        devices = self.call(g.list_devices)
        partitions = self.call(g.list_partitions)
        lvs = self.call(g.lvs)
        fstypes: dict[str, str] = self.call(g.list_filesystems)
        pv_disks: dict[str, str] = {}  # pv uuid -> its whole-disk device
        for pv in self.call(g.pvs_full) if lvs else []:
            pv_disks[_plain_uuid(pv["pv_uuid"])] = self._disk_of(pv["pv_name"], devices)
        out = []
        for dev in dict.fromkeys([*devices, *partitions, *lvs, *fstypes]):
            fstype = fstypes.get(dev) or ""
            if not fstype and not dev.startswith("btrfsvol:"):  # an LVM PV, a LUKS volume
                fstype = self._vfs_type(dev)
            entry: dict[str, Any] = {"device": dev, "fstype": fstype}
            if dev in devices:
                entry["kind"], entry["disks"] = "disk", [dev]
                entry["partitioned"] = any(p.startswith(dev) for p in partitions)
            elif dev.startswith("btrfsvol:"):
                entry["kind"], entry["disks"] = "subvolume", []
            elif dev in lvs or self._is_lv(dev):
                uuids = self.call(g.vgpvuuids, dev.split("/")[2])
                entry["kind"] = "lv"
                entry["disks"] = sorted({pv_disks.get(_plain_uuid(u), "") for u in uuids} - {""})
            else:
                entry["kind"], entry["disks"] = "partition", [self._disk_of(dev, devices)]
            entry.update(self._describe(dev, entry))
            out.append(entry)
        return out

    def _describe(self, dev: str, entry: dict[str, Any]) -> dict[str, Any]:
        g = self.g
        base = dev.split(":", 1)[1].rsplit("/", 1)[0] if dev.startswith("btrfsvol:") else dev
        found: dict[str, Any] = {"size": _quiet(lambda: g.blockdev_getsize64(base), 0)}
        if entry["fstype"] and entry["kind"] != "subvolume":
            found["label"] = _quiet(lambda: g.vfs_label(dev), "")
            found["uuid"] = _quiet(lambda: g.vfs_uuid(dev), "")
        return found

    def _vfs_type(self, dev: str) -> str:
        return str(_quiet(lambda: self.g.vfs_type(dev), "") or "")

    def _is_lv(self, dev: str) -> bool:
        return bool(_quiet(lambda: self.g.is_lv(dev), False))

    def _disk_of(self, dev: str, devices: list[str]) -> str:
        if dev in devices:
            return dev
        return str(_quiet(lambda: self.g.part_to_dev(dev), ""))

    def mount(self, device: str) -> None:
        if self.mounted == device:
            return
        if self.mounted is not None:
            self.call(self.g.umount_all)
            self.mounted = None
        try:
            self.g.mount_ro(device, "/")
        except RuntimeError as exc:
            raise Failure(str(exc), "mount") from None
        self.mounted = device

    def ls(self, req: dict[str, Any]) -> list[dict[str, Any]]:
        self.mount(req["device"])
        path = req["path"]
        top = self.call(self.g.lstatns, path)
        if not stat.S_ISDIR(top["st_mode"]):
            raise Failure(f"{path}: Not a directory", "notdir")
        names = sorted(self.call(self.g.ls, path))
        out: list[dict[str, Any]] = []
        for at in range(0, len(names), BATCH):
            batch = names[at : at + BATCH]
            stats = self.call(self.g.lstatnslist, path, batch)
            links = [n for n, s in zip(batch, stats, strict=True) if stat.S_ISLNK(s["st_mode"])]
            found = self.call(self.g.readlinklist, path, links) if links else []
            targets = dict(zip(links, found, strict=True))
            out.extend(_entry(n, s, targets.get(n)) for n, s in zip(batch, stats, strict=True))
        return out

    def stat(self, req: dict[str, Any]) -> dict[str, Any]:
        self.mount(req["device"])
        path = req["path"]
        st = self.call(self.g.lstatns, path)
        target = self.call(self.g.readlink, path) if stat.S_ISLNK(st["st_mode"]) else None
        return _entry(os.path.basename(path) or "/", st, target)

    def stream(self, req: dict[str, Any]) -> None:
        """download (a regular file's bytes) or tar_out (a directory's tree, as tar)."""
        self.mount(req["device"])
        path = req["path"]
        mode = self.call(self.g.lstatns, path)["st_mode"]
        if req["op"] == "download" and not stat.S_ISREG(mode):
            raise Failure(
                f"{path}: not a regular file", "isdir" if stat.S_ISDIR(mode) else "invalid"
            )
        if req["op"] == "tar_out" and not stat.S_ISDIR(mode):
            raise Failure(f"{path}: Not a directory", "notdir")
        self.reply({"ok": "stream"})
        read_end, write_end = os.pipe()
        _widen(write_end)
        pump = threading.Thread(target=self._pump, args=(read_end,), daemon=True)
        pump.start()
        error: Failure | None = None
        try:
            target = f"/dev/fd/{write_end}"  # libguestfs opens it anew: the same pipe
            if req["op"] == "download":
                self.call(self.g.download, path, target)
            else:
                # xattrs: GNU tar then writes pax headers, whose mtimes keep the ns.
                self.call(self.g.tar_out, path, target, numericowner=True, xattrs=True)
        except Failure as exc:
            error = exc
        finally:
            os.close(write_end)
            pump.join()
        if error is not None:
            raise error
        self.reply({"ok": "done"})

    def _pump(self, fd: int) -> None:
        with os.fdopen(fd, "rb", buffering=0) as pipe:
            while chunk := pipe.read(CHUNK):
                self.out.write(FRAME.pack(len(chunk)) + chunk)
            self.out.write(FRAME.pack(0))
            self.out.flush()


def _entry(name: str, st: dict[str, int], target: str | None) -> dict[str, Any]:
    return {
        "name": name,
        "mode": st["st_mode"],
        "size": st["st_size"],
        "mtime_ns": st["st_mtime_sec"] * 1_000_000_000 + st["st_mtime_nsec"],
        "uid": st["st_uid"],
        "gid": st["st_gid"],
        "target": target,
    }


def _widen(fd: int) -> None:
    """A pipe of CHUNK bytes (64 KiB by default): fewer wake-ups per MiB copied."""
    # Beyond /proc/sys/fs/pipe-max-size for an unprivileged user: the default stays.
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, CHUNK)


def _plain_uuid(value: str) -> str:
    return value.replace("-", "").lower()


def _quiet(fn: Callable[[], Any], default: Any) -> Any:
    try:
        return fn()
    except RuntimeError:
        return default


def main() -> int:
    _widen(1)
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever libguestfs or QEMU print goes to stderr
    guestfs = importlib.import_module("guestfs")
    first = sys.stdin.readline()
    agent = Agent(guestfs.GuestFS(python_return_dict=True), out)
    try:
        request = json.loads(first)
        for disk in request["disks"]:
            agent.g.add_drive_opts(disk["path"], readonly=True, format=disk["format"])
        agent.g.launch()
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        agent.reply({"error": f"cannot start the appliance: {exc}", "kind": "tool"})
        return 1
    agent.reply({"ok": "ready"})
    handlers: dict[str, Callable[[dict[str, Any]], Any]] = {
        "inventory": agent.inventory,
        "ls": agent.ls,
        "stat": agent.stat,
    }
    for line in sys.stdin:
        try:
            req = json.loads(line)
            if req["op"] in ("download", "tar_out"):
                agent.stream(req)
                continue
            handler = handlers.get(req["op"])
            if handler is None:
                raise Failure(f"unknown request {req['op']!r}", "invalid")
            agent.reply({"ok": handler(req)})
        except Failure as exc:
            agent.reply({"error": str(exc), "kind": exc.kind})
        except (ValueError, KeyError, TypeError) as exc:
            agent.reply({"error": f"bad request: {exc}", "kind": "invalid"})
    agent.g.shutdown()
    agent.g.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
