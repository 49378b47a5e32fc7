"""The machine a run was taken on."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from typing import Any


def _out(*argv: str) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)  # noqa: S603
    except OSError:
        return ""
    return done.stdout.strip()


def _meminfo_gib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    return 0.0


def _cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def describe() -> dict[str, Any]:
    virsh = _out("virsh", "-c", "qemu:///system", "version")
    versions = dict(re.findall(r"^(.*?):\s*(.*)$", virsh, re.M))
    return {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gib": round(_meminfo_gib(), 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "qemu_img": _out("qemu-img", "--version").splitlines()[0:1],
        "libvirt": versions.get("Using library", ""),
        "qemu": versions.get("Running hypervisor", ""),
        "kvm": os.path.exists("/dev/kvm"),
        "lab_vm_type": "qemu (TCG)",
        "load_average": os.getloadavg(),
    }
