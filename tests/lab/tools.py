"""Checks with the real tools: qemu-img, qemu-io, virsh. Lab tests only."""

from __future__ import annotations

import contextlib
import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from snapgroup.testing.labvm import LabVm, create_lab_vm, lab_directory

URI = "qemu:///system"


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check)


def virsh(*argv: str) -> str:
    return sh("virsh", "-c", URI, *argv).stdout


def domblklist(vm: str, *, inactive: bool = False) -> dict[str, str]:
    out = virsh("domblklist", vm, *(["--inactive"] if inactive else []))
    rows = [line.split(None, 1) for line in out.splitlines()[2:] if line.strip()]
    return {target: source.strip() for target, source in rows}


def backing_chain(path: str) -> list[str]:
    out = sh("qemu-img", "info", "-U", "--backing-chain", "--output=json", path).stdout
    layers: list[dict[str, Any]] = json.loads(out)
    return [layer["filename"] for layer in layers]


def write_live(vm: str, disk_index: int, pattern: int, offset_mib: int) -> None:
    """Write 1 MiB through the running VM's own block backend (HMP qemu-io)."""
    device = f"virtio-disk{disk_index}/virtio-backend"
    for io in (f"write -P {pattern} {offset_mib}M 1M", "flush"):  # flush: qcow2 metadata too
        out = virsh("qemu-monitor-command", vm, "--hmp", f'qemu-io -d {device} "{io}"')
        assert out.strip() == "", out


def write_offline(path: str, pattern: int, offset_mib: int) -> None:
    sh("qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} {offset_mib}M 1M", path)


def reads(path: str, pattern: int, offset_mib: int) -> bool:
    """Does the image (with its chain) hold `pattern` at that MiB?"""
    result = sh(
        "qemu-io",
        "-U",
        "-r",
        "-f",
        "qcow2",
        "-c",
        f"read -P {pattern} {offset_mib}M 1M",
        path,
        check=False,
    )
    return result.returncode == 0 and "verification failed" not in result.stdout


def export(path: str, dest: Path) -> Path:
    """A standalone copy of the view a chain presents."""
    sh("qemu-img", "convert", "-U", "-O", "qcow2", path, str(dest))
    return dest


def same(a: str | Path, b: str | Path) -> bool:
    return sh("qemu-img", "compare", "-U", str(a), str(b), check=False).returncode == 0


@contextlib.contextmanager
def tmpfs_lab_vm(prefix: str, size_mib: int, *, disk_mib: int = 64) -> Iterator[LabVm]:
    """A running lab VM whose disks live on a tmpfs of `size_mib` MiB, a filesystem the
    test can fill (fill()); unmounted and removed afterwards."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    mount = lab_directory(name)
    mount.mkdir(parents=True)
    sh("mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0755", "tmpfs", str(mount))
    vm = None
    try:
        vm = create_lab_vm(mount / "vm", name=name, disk_mib=disk_mib)
        yield vm
    finally:
        if vm is not None:
            vm.destroy()
        sh("umount", "-l", str(mount), check=False)
        subprocess.run(["rm", "-rf", str(mount)], check=False)


def free_bytes(directory: Path) -> int:
    return int(sh("df", "--output=avail", "-B1", str(directory)).stdout.split()[-1])


def fill(directory: Path, leave: int, name: str = "filler") -> Path:
    """A file outside snapgroup's knowledge that leaves `leave` bytes free."""
    filler = directory / name
    sh("fallocate", "-l", str(max(0, free_bytes(directory) - leave)), str(filler))
    return filler
