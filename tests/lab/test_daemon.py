"""A real `snapgroup daemon` process serving the `snapgroup` command: a group's create
and delete on a running lab VM go through it, with the same effect on libvirt and the
files as in-process, and it stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapgroup.api import Engine
from snapgroup.testing.labvm import LabVm
from tests.lab.tools import backing_chain, domblklist


class _Daemon:
    def __init__(self, db: str) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="sgd-", dir="/tmp"))
        self.socket = self.directory / "cli.sock"
        self.log = self.directory / "daemon.log"
        self.env = {**os.environ, "SNAPGROUP_SOCKET": str(self.socket)}
        self.db = db
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "snapgroup", "--db", db, "daemon"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while not self.socket.exists():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "the daemon never listened"
            time.sleep(0.1)

    def cli(self, *argv: str) -> tuple[int, str, str]:
        done = subprocess.run(
            [sys.executable, "-m", "snapgroup", "--db", self.db, *argv],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        return done.returncode, done.stdout, done.stderr

    def served(self) -> list[str]:
        return [line.split()[2] for line in self.log.read_text().splitlines() if " exit " in line]


@pytest.fixture
def daemon(engine: Engine) -> Iterator[_Daemon]:
    d = _Daemon(engine.db.url)
    yield d
    if d.proc.poll() is None:
        d.proc.kill()
        d.proc.wait()


def test_create_and_delete_through_the_daemon(
    daemon: _Daemon, engine: Engine, running_vm: LabVm
) -> None:
    before = domblklist(running_vm.name)
    code, out, err = daemon.cli("--json", "create", "--vm", running_vm.name, "--name", "via")
    assert code == 0, (out, err, daemon.log.read_text())
    group = json.loads(out)["inventory"]
    assert group["snapshotCount"] == len(before)
    now = domblklist(running_vm.name)
    for target, top in now.items():
        assert top != before[target]
        assert backing_chain(top)[1] == before[target]
    assert [g.uuid for g in engine.list_groups(vm=running_vm.name)] == [group["uuid"]]

    code, out, err = daemon.cli("--json", "delete", group["uuid"])
    assert code == 0, err
    assert all(r["success"] for r in json.loads(out)["results"])
    assert domblklist(running_vm.name) == before
    assert daemon.served() == ["create:", "delete:"]  # neither ran in the client

    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=30) == 0
    assert not daemon.socket.exists()
    code, out, _ = daemon.cli("--json", "list")  # no daemon: runs in the client
    assert code == 0 and json.loads(out) == {"inventories": []}
