"""Lab tests need a real libvirtd + QEMU. They skip where the machine truly cannot run
them, except when SNAPGROUP_REQUIRE_LAB=1 (set by .ci/run): then a missing stack fails."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def _lab_missing() -> str | None:
    for tool in ("qemu-img", "qemu-io", "virsh", "qemu-system-x86_64"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    probe = subprocess.run(
        ["virsh", "-c", "qemu:///system", "version"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        return f"libvirtd not reachable: {probe.stderr.strip()}"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not any("lab" in item.keywords for item in items):
        return
    missing = _lab_missing()
    if missing is None:
        return
    if os.environ.get("SNAPGROUP_REQUIRE_LAB") == "1":
        raise pytest.UsageError(f"lab tests are required here but cannot run: {missing}")
    skip = pytest.mark.skip(reason=f"lab stack unavailable: {missing}")
    for item in items:
        if "lab" in item.keywords:
            item.add_marker(skip)
