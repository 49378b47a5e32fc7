"""Checks with the real tools: qemu-img, qemu-io, virsh. Lab tests only."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

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
