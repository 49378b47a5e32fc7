"""What the hostile memory-group lab tests share (tests/lab/test_memory_hostile.py,
tests/lab/test_memory_kills.py): one firmware lab VM per module on a tmpfs, the data of
its groups saved and compared byte for byte, leaks looked for, the CLI killed."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from snapgroup.api import Engine, open_engine
from snapgroup.cli.wire import NO_DAEMON_ENV
from snapgroup.domain.inventory import Group
from snapgroup.ops.journal import FAULT_ENV
from snapgroup.testing.labvm import LabVm
from tests.lab.tools import (
    backing_chain,
    domblklist,
    export,
    same,
    sh,
)

RECENT = 4  # groups whose data each test checks byte for byte
TMPFS_MIB = 640  # the memory check asks 256 + 16 MiB free; the firmware's state is ~1 MiB


@contextlib.contextmanager
def module_engine(prefix: str) -> Iterator[Engine]:
    """A module's engine, its store in a scratch directory under /var/tmp (QEMU's user
    gets through it: clones' and restores' files may go below)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    path.chmod(0o755)
    eng = open_engine(connect="qemu:///system", db=f"sqlite:///{path / 'snapgroup.db'}")
    try:
        yield eng
    finally:
        eng.db.dispose()
        shutil.rmtree(path, ignore_errors=True)


def state(name: str) -> str:
    return sh("virsh", "-c", "qemu:///system", "domstate", name).stdout.strip()


def files(directory: Path) -> set[str]:
    return set(os.listdir(directory))


def views(groups: list[Group], dest: Path) -> dict[str, Path]:
    """A standalone copy of the view each ref's file presents, by snapshot uuid: of the
    last RECENT groups (the module's groups pile up; earlier tests checked the rest)."""
    dest.mkdir(exist_ok=True)
    return {
        r.volume_snapshot_uuid: export(r.install_path, dest / f"{uuid.uuid4().hex}.qcow2")
        for g in groups[-RECENT:]
        for r in g.refs
    }


def assert_intact(engine: Engine, groups: list[Group], saved: dict[str, Path]) -> None:
    """Each of the last RECENT groups still available, every ref presenting the view
    it had."""
    for g in groups[-RECENT:]:
        assert engine.check([g.uuid])[0].available, engine.check([g.uuid])[0]
        for r in engine.get(g.uuid).refs:
            assert same(saved[r.volume_snapshot_uuid], r.install_path), r.install_path


def assert_clean(engine: Engine, vm: LabVm, also: set[str] | None = None) -> None:
    """No operation left open, every qcow2 in the VM's directory checks clean, every
    UUID-named file in it is one a group or the VM names (or `also`: a clone's), or is
    in the backing chain of one."""
    assert [op for op in engine.operations() if op.state == "running"] == []
    named = {*(d.name for d in vm.disks), *(also or ())}
    for g in engine.list_groups(vm=vm.name):
        named |= {os.path.basename(r.install_path) for r in g.refs}
        if g.memory is not None:
            named.add(os.path.basename(g.memory.file))
    named |= {os.path.basename(p) for p in domblklist(vm.name).values()}
    for name in list(named):
        if name.endswith(".qcow2") and (vm.directory / name).exists():
            named |= {os.path.basename(p) for p in backing_chain(str(vm.directory / name))}
    for name in files(vm.directory):
        path = vm.directory / name
        if name.endswith(".qcow2"):
            sh("qemu-img", "check", "-U", str(path))
        if name.endswith((".qcow2", ".mem")) and len(name.split(".")[0]) == 32:
            assert name in named, f"leaked: {path}"


def cli(engine_db: str, *args: str, die_at: str | None = None) -> subprocess.Popen[str]:
    """The CLI in a process of its own; `die_at`: the journal step (`kind:step@n`) where
    it SIGKILLs itself."""
    env = {**os.environ, NO_DAEMON_ENV: "1"}  # this process does the work: kill -9 hits it
    env.pop(FAULT_ENV, None)
    if die_at is not None:
        env[FAULT_ENV] = die_at
    argv = [sys.executable, "-m", "snapgroup", "--db", engine_db, "--json", *args]
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def kill_after(engine: Engine, proc: subprocess.Popen[str], kind: str, delay: float) -> str:
    """SIGKILL `proc` `delay` seconds after its `kind` operation was journaled: the
    journal's last step of each operation it left open then ("" when it finished first)."""
    known = {op.uuid for op in engine.operations(limit=20)}
    while proc.poll() is None:
        if any(o.kind == kind and o.uuid not in known for o in engine.operations(limit=5)):
            time.sleep(delay)
            if proc.poll() is not None:
                return ""
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            ops = engine.operations(limit=10)
            return ",".join(f"{o.kind}:{o.step}" for o in ops if o.state == "running") or "-"
        time.sleep(0.005)
    return ""


# Delays after the operation's first journal row: its first steps, the merges (a
# commit of the firmware guest's few MiB), the memory file's removal and the rows.
DELAYS = (0.0, 0.03, 0.1, 0.25, 0.6)
