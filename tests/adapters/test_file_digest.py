"""A memory file's digest (adapters/file_digest.py): remembered while the file's stat
holds, read again once it is written."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from snapgroup.adapters.file_digest import digest
from snapgroup.domain.errors import ImageToolError


def test_the_digest_is_the_files_sha256_and_a_change_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "a.mem"
    path.write_bytes(b"x" * 3_000_000)
    first = digest(str(path))
    assert (first.size, first.sha256) == (3_000_000, hashlib.sha256(b"x" * 3_000_000).hexdigest())
    assert digest(str(path)) == first  # remembered
    st = path.stat()
    # One byte changed, size and mtime put back as they were: only the ctime tells
    # (written again until the kernel's coarse clock has moved it).
    while path.stat().st_ctime_ns == st.st_ctime_ns:
        with open(path, "r+b") as f:
            f.seek(1000)
            f.write(b"y")
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    changed = digest(str(path))
    assert changed.size == first.size and changed.sha256 != first.sha256  # ctime moved


def test_a_missing_file_is_an_image_tool_error(tmp_path: Path) -> None:
    with pytest.raises(ImageToolError, match="cannot read"):
        digest(str(tmp_path / "gone.mem"))


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_what_is_not_a_regular_file_is_refused_not_read(tmp_path: Path, kind: str) -> None:
    """A memory file replaced by a FIFO (its open blocked `check` until a writer came)
    or by a link to a device such as /dev/zero (read forever): refused at once. Run in
    a child so that, before the fix, the test fails instead of hanging the run."""
    path = tmp_path / "a.mem"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    code = (
        "import sys\n"
        "from snapgroup.adapters.file_digest import digest\n"
        "from snapgroup.domain.errors import ImageToolError\n"
        "try:\n"
        "    digest(sys.argv[1])\n"
        "except ImageToolError as exc:\n"
        "    print(exc.details)\n"
        "    sys.exit(3)\n"
    )
    try:
        run = subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"digest of a {kind} did not return")
    assert run.returncode == 3, run.stderr
    assert "not a regular file" in run.stdout
