"""The launcher (bin/snapgroup -> snapgroup.cli.launch) starts on a bare interpreter's
modules and its own: every command served by the daemon pays its start-up (issue 20)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_the_launcher_loads_no_importlib_nor_warnings() -> None:
    """snapgroup/__init__.py loads its public names on first use, with importlib then
    (importlib and warnings: ~0.5 ms of each start)."""
    probe = "import sys, json, snapgroup.cli.launch; print(json.dumps(sorted(sys.modules)))"
    bare = "import sys, json; print(json.dumps(sorted(sys.modules)))"
    run = [sys.executable, "-c"]
    loaded = set(json.loads(subprocess.run([*run, probe], capture_output=True, check=True).stdout))
    before = set(json.loads(subprocess.run([*run, bare], capture_output=True, check=True).stdout))
    assert {"importlib", "warnings"} & (loaded - before) == set()
