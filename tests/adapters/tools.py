"""What the adapter tests share: the real qemu tools, required or skipped."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def require_qemu_tools() -> None:
    """Skip the calling module without qemu-img / qemu-io, unless the lab is required
    (SNAPGROUP_REQUIRE_LAB=1, as in CI): then their absence fails the tests."""
    missing = shutil.which("qemu-img") is None or shutil.which("qemu-io") is None
    if missing and os.environ.get("SNAPGROUP_REQUIRE_LAB") != "1":
        pytest.skip("qemu-img / qemu-io not installed", allow_module_level=True)


def sh(*argv: str | Path) -> str:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{argv}: {done.stderr}"
    return done.stdout
