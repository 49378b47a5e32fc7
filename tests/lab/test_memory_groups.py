"""Memory groups on the real stack (libvirt 9.0 + QEMU, the lab guest under TCG): a
memory group taken of the running guest, which then runs on; a revert brings it back
running at the snapshot's moment (its uptime continues from there, not from the later
value nor from a cold boot), every disk holding the snapshot's data, and again.

One guest for the module (it boots in 10-20 s under TCG); its writer appends ordered
numbers to /seq on both data disks all the while (lab/guest/init)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from snapgroup.api import Engine, open_engine
from snapgroup.cli.wire import NO_DAEMON_ENV
from tests.lab.test_guest import (
    DATA_SERIALS,
    Guest,
    agent,
    booted_guest,
    guest_values,
    virsh,
    virsh_ok,
)
from tests.lab.tools import backing_chain, domblklist, same

# One xdist worker a module: one VM booted, not one a worker.
pytestmark = [pytest.mark.lab, pytest.mark.xdist_group("memory-groups")]
RUN_ON_S = 8.0  # guest seconds the guest runs on after the snapshot, before a revert


@pytest.fixture(scope="module")
def guest() -> Iterator[Guest]:
    with booted_guest(
        scratch_prefix="sg-lab-mem-", scratch_dir="/var/tmp", name_prefix="sg-lab-mem-"
    ) as g:
        yield g


@pytest.fixture(scope="module")
def db_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sg-lab-mem-db-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def engine(db_dir: Path) -> Iterator[Engine]:
    eng = open_engine(connect="qemu:///system", db=f"sqlite:///{db_dir / 'snapgroup.db'}")
    yield eng
    eng.db.dispose()


def guest_exec(name: str, *argv: str) -> str:
    """Run a program in the guest through its agent; its stdout."""
    started = agent(
        name, "guest-exec", {"path": argv[0], "arg": list(argv[1:]), "capture-output": True}
    )
    assert isinstance(started, dict)
    while True:
        status = agent(name, "guest-exec-status", {"pid": started["pid"]})
        assert isinstance(status, dict)
        if status["exited"]:
            assert status.get("exitcode") == 0, status
            return base64.b64decode(status.get("out-data", "")).decode()
        time.sleep(0.05)


def wait_for_agent(name: str) -> None:
    """Just after a restore libvirt may not see the agent connected yet."""
    deadline = time.monotonic() + 30
    while virsh("qemu-agent-command", name, '{"execute":"guest-ping"}').returncode != 0:
        assert time.monotonic() < deadline, "the guest agent did not come back"
        time.sleep(0.1)


def uptime(name: str) -> float:
    wait_for_agent(name)
    return float(guest_exec(name, "/bin/cat", "/proc/uptime").split()[0])


def guest_clock_offset(name: str) -> float:
    """The guest's wall clock minus the host's, in seconds."""
    ns = agent(name, "guest-get-time")
    assert isinstance(ns, int)
    return ns / 1e9 - time.time()


def file_in_guest(name: str, path: str) -> bool:
    proc = virsh(
        "qemu-agent-command",
        name,
        json.dumps({"execute": "guest-file-open", "arguments": {"path": path, "mode": "r"}}),
        "--timeout",
        "10",
    )
    if proc.returncode != 0:
        return False
    handle = json.loads(proc.stdout)["return"]
    agent(name, "guest-file-close", {"handle": handle})
    return True


def state(name: str) -> str:
    return virsh_ok("domstate", name).strip()


def test_revert_brings_the_guest_back_running_at_the_snapshot(guest: Guest, engine: Engine) -> None:
    name = guest.name
    while min(guest_values(name)) < 3:  # the writer is at work
        time.sleep(0.2)
    values_before = guest_values(name)
    up_before = uptime(name)
    started = time.monotonic()
    group = engine.create(vm=name, name="m1", with_memory=True)
    create_s = time.monotonic() - started
    up_after_create = uptime(name)

    # The group: a memory file beside the root disk, named by UUID, root 0600, recorded.
    memory = group.memory
    assert memory is not None and group.to_inventory()["withMemory"] is True
    root_dir = os.path.dirname(group.refs[0].install_path)
    assert os.path.dirname(memory.file) == root_dir and memory.file.endswith(".mem")
    st = os.stat(memory.file)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0 and st.st_size == memory.size
    assert memory.mode == "paused" and state(name) == "running"
    assert memory.size > 64 << 20  # the guest's 256 MiB, what it touched of them
    # What every disk held at the snapshot: copies of the group's snapshot files.
    copies = []
    for ref in group.refs:
        copy = guest.scratch / f"at-snapshot-{ref.volume_snapshot_uuid}.qcow2"
        shutil.copyfile(ref.install_path, copy)
        copies.append((ref.install_path, copy))

    # The guest runs on: a file written after the snapshot, the writer going on.
    guest_exec(name, "/bin/sh", "-c", f"echo later > /mnt/{DATA_SERIALS[0]}/after && sync")
    while uptime(name) < up_after_create + RUN_ON_S:
        time.sleep(0.5)
    values_late = guest_values(name)
    up_late = uptime(name)
    assert all(late > before + 5 for late, before in zip(values_late, values_before, strict=True))

    for attempt in ("first", "second"):
        started = time.monotonic()
        report = engine.revert(group.uuid, stop=True, stop_timeout=0)
        revert_s = time.monotonic() - started
        assert report.error is None, report.to_response()
        assert report.resumed == "Running" and report.note is None, attempt
        assert state(name) == "running"
        up = uptime(name)
        # Its uptime continues from the snapshot's: not the later value, not a cold boot.
        assert up_before <= up < up_late, (attempt, up_before, up, up_late)
        print(
            f"\n{attempt} revert: {revert_s:.2f} s (create {create_s:.2f} s, memory file "
            f"{memory.size >> 20} MiB); uptime {up_before:.1f} at the snapshot, "
            f"{up_late:.1f} before the revert, {up:.1f} after it"
        )
        values = guest_values(name)
        assert all(
            before <= now < late
            for before, now, late in zip(values_before, values, values_late, strict=True)
        ), (attempt, values_before, values, values_late)
        assert not file_in_guest(name, f"/mnt/{DATA_SERIALS[0]}/after")  # written later
        assert abs(guest_clock_offset(name)) < 5.0  # set through the agent
        # Every disk runs on a new overlay over its snapshot file, which is unchanged;
        # the persistent definition names the same overlays.
        live, persistent = domblklist(name), domblklist(name, inactive=True)
        for ref, (snapshot_file, copy) in zip(group.refs, copies, strict=True):
            target = guest.vm.targets[ref.device_id]
            assert live[target] == persistent[target] != snapshot_file
            assert backing_chain(live[target])[1] == snapshot_file
            assert same(snapshot_file, copy)
        assert engine.check([group.uuid])[0].available
        # and it keeps running: the writer goes on from where it was
        time.sleep(1.0)
        assert guest_values(name) >= values


def _snapgroup(db: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, NO_DAEMON_ENV: "1"}  # this process does the work: kill -9 hits it
    env.pop("SNAPGROUP_FAULT_STEP", None)
    argv = [sys.executable, "-m", "snapgroup", "--db", db, "--json", *args]
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def _kill_when(proc: subprocess.Popen[str], ready: Callable[[], bool]) -> bool:
    """SIGKILL `proc` as soon as `ready()` (True), or let it finish first (False)."""
    while proc.poll() is None:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.01)
    return False


def _memory_files(directory: str) -> set[str]:
    return {os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(".mem")}


def test_kill_9_during_the_save_and_during_the_restore(
    guest: Guest, engine: Engine, db_dir: Path
) -> None:
    name = guest.name
    db = f"sqlite:///{db_dir / 'snapgroup.db'}"
    directory = os.path.dirname(domblklist(name)[guest.vm.targets[0]])
    before = _memory_files(directory)

    # kill -9 while libvirt writes the memory file: libvirtd finishes or undoes its
    # snapshot whatever becomes of the client; recover records it whole, or nothing.
    up_snapshot = uptime(name)
    proc = _snapgroup(db, "create", "--vm", name, "--name", "k1", "--with-memory")
    killed = _kill_when(proc, lambda: bool(_memory_files(directory) - before))
    engine.recover()
    assert state(name) == "running"
    assert [op for op in engine.operations() if op.state == "running"] == []
    made = [g for g in engine.list_groups(vm=name) if g.name == "k1"]
    new_files = _memory_files(directory) - before
    if made:
        (group,) = made
        assert group.memory is not None and new_files == {group.memory.file}
        assert engine.check([group.uuid])[0].available
    else:
        assert new_files == set()
    print(f"\ncreate killed: {killed}; after recover: {'a group' if made else 'no group'}")

    group = made[0] if made else engine.create(vm=name, name="k2", with_memory=True)
    if not made:
        up_snapshot = uptime(name)
    while uptime(name) < up_snapshot + RUN_ON_S:
        time.sleep(0.5)
    up_late = uptime(name)

    # kill -9 once the revert is restoring the memory state: recover finishes it.
    proc = _snapgroup(db, "revert", group.uuid, "--stop", "--stop-timeout", "0")

    def restoring() -> bool:
        ops = [o for o in engine.operations(limit=5) if o.kind == "revert"]
        return bool(ops) and ops[0].state == "running" and ops[0].step == "restoring"

    killed = _kill_when(proc, restoring)
    rows = engine.recover()
    assert state(name) == "running"
    assert [op for op in engine.operations() if op.state == "running"] == []
    up = uptime(name)
    assert up_snapshot - 5 <= up < up_late, (up_snapshot, up, up_late)
    print(f"revert killed while restoring: {killed}; recovered: {[r.kind for r in rows]}")
