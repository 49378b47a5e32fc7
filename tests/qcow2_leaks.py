"""Leaked clusters made on purpose, and `qemu-img check` as a test reads it (adapter and
lab tests)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path
from typing import Any


def check(path: str | Path, *, shared: bool = False) -> tuple[int, dict[str, Any]]:
    """`qemu-img check`'s exit code (0 clean, 2 corrupt, 3 leaks) and its report."""
    argv = ["qemu-img", "check", *(["-U"] if shared else []), "--output=json", str(path)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.stdout.strip(), (argv, done.returncode, done.stderr[-2000:])
    return done.returncode, json.loads(done.stdout)


def leak_a_cluster(path: str | Path) -> None:
    """What a commit killed while it writes its metadata leaves (the refcounts on disk,
    the L2 entries not): a cluster counted as used that nothing references. Made by
    hand, exactly: one cluster appended, its refcount set to 1; no data is touched."""
    with open(path, "r+b") as f:
        header = f.read(104)
        (cluster_bits,) = struct.unpack(">I", header[20:24])
        (table,) = struct.unpack(">Q", header[48:56])
        (order,) = struct.unpack(">I", header[96:100])
        assert order == 4, "16-bit refcounts (qemu-img's default)"
        size = 1 << cluster_bits
        index = (os.fstat(f.fileno()).st_size + size - 1) // size
        per_block = size // 2
        f.seek(table + 8 * (index // per_block))
        (block,) = struct.unpack(">Q", f.read(8))
        assert block, "a refcount block covers the new cluster"
        f.truncate((index + 1) * size)
        f.seek(block + 2 * (index % per_block))
        f.write(struct.pack(">H", 1))
    code, report = check(path)
    assert (code, report.get("leaks")) == (3, 1), report
