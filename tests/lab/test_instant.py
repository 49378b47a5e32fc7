"""Instant recovery on real libvirtd + QEMU: `restore --instant` answers with the new VM
running on thin overlays over the repository while QEMU copies its disks local (block
pulls, slowed here with --bandwidth so the copy is seen running); a snapgroup killed
with -9 mid-copy stops nothing, and `recover` finishes the operation: every disk
standalone and equal to the backup, the backup's hold gone. A VM destroyed mid-copy (a
host restart) is finished offline by recover. `clone --instant` ends pinning nothing:
its group can then be deleted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from snapgroup.api import Engine
from snapgroup.testing.labvm import LabVm
from tests.lab.tools import backing_chain, domblklist, same, sh, virsh

pytestmark = pytest.mark.lab
WAIT_S = 300.0  # how long a copy may take before the test gives up (not a measure)


def _fill(vm: LabVm) -> None:
    """40 MiB of a pattern per disk, so that a slowed pull takes seconds."""
    for n, (_target, path) in enumerate(sorted(domblklist(vm.name, inactive=True).items())):
        sh("qemu-io", "-f", "qcow2", "-c", f"write -P {0x40 + n} 0 40M", path)


def _pulls(engine: Engine, name: str) -> dict[str, object]:
    uuid = engine.hv.lookup(name).uuid
    return {t: job for t in domblklist(name) if (job := engine.hv.block_job(uuid, t)) is not None}


def _wait(condition: object, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.2)


def _instant_ops(engine: Engine) -> list[tuple[str, str]]:
    return [(r.state, r.step) for r in engine.operations() if r.kind == "instant"]


def _recover_through(engine: Engine, name: str) -> None:
    """What later commands do: each recover drives the copy one step (the next disk's
    pull when none runs); the pulls are let go full speed (bandwidth 0: no cap)."""
    while _instant_ops(engine)[0][0] == "running":
        for target in _pulls(engine, name):
            sh(
                "virsh",
                "-c",
                "qemu:///system",
                "blockjob",
                name,
                target,
                "--bandwidth",
                "0",
                check=False,
            )  # it may have ended meanwhile
        _wait(lambda: not _pulls(engine, name), "the pull to end")
        engine.recover()


def test_killed_mid_copy_the_vm_runs_on_and_recover_finishes_it(
    engine: Engine, stopped_vm: LabVm, labdir: Path, restored: list[str]
) -> None:
    vm = stopped_vm
    _fill(vm)
    repo = vm.directory / "repo"
    backup = engine.export(engine.create(vm=vm.name, name="g").uuid, to=str(repo)).manifest
    new = f"{vm.name}-instant"
    restored.append(new)
    db = f"sqlite:///{labdir / 'snapgroup.db'}"
    cli = [sys.executable, "-m", "snapgroup", "--db", db, "--connect", "qemu:///system"]
    args = ["--as", new, "--disk-dir", str(vm.directory), "--start", "--instant"]
    proc = subprocess.Popen(
        [
            *cli,
            "restore",
            "--from",
            str(repo),
            backup.backup_id,
            *args,
            "--bandwidth",
            "2",
            "--follow",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "SNAPGROUP_NO_DAEMON": "1"},
    )
    try:
        # The copy reads the backup's checksums first (vda's pull already running).
        _wait(lambda: ("running", "verified") in _instant_ops(engine), "the copy's check")
        # The VM runs while its disks are still being copied: it answered before the end.
        assert virsh("domstate", new).strip() == "running"
        assert set(_pulls(engine, new)) == {"vda"}  # one at a time
        held = list((repo / vm.uuid / backup.backup_id).glob("hold-*.json"))
        assert len(held) == 1
        proc.send_signal(signal.SIGKILL)  # the follower dies; QEMU copies on
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert set(_pulls(engine, new)) == {"vda"}  # QEMU copies on
    engine.recover()
    assert _instant_ops(engine) == [("running", "verified")]  # still copying: left open
    _recover_through(engine, new)
    assert [s for s, _ in _instant_ops(engine)] == ["done"]
    assert not list((repo / vm.uuid / backup.backup_id).glob("hold-*.json"))
    assert virsh("domstate", new).strip() == "running"
    for target, path in domblklist(new).items():
        assert backing_chain(path) == [path], target  # local and standalone
        disk = next(d for d in backup.disks if d.target == target)
        assert same(path, repo / vm.uuid / backup.backup_id / disk.file), target


def test_a_vm_destroyed_mid_copy_is_made_standalone_offline_by_recover(
    engine: Engine, stopped_vm: LabVm, restored: list[str]
) -> None:
    vm = stopped_vm
    _fill(vm)
    repo = vm.directory / "repo"
    backup = engine.export(engine.create(vm=vm.name, name="g").uuid, to=str(repo)).manifest
    new = f"{vm.name}-instant"
    restored.append(new)
    done, copying = engine.instant_restore(
        backup.backup_id, source=str(repo), as_vm=new, disk_dir=str(vm.directory), bandwidth=1
    )
    assert done.state == "Running" and not copying.done
    assert _pulls(engine, new)
    virsh("destroy", new)  # the host goes down: QEMU and its jobs with it
    engine.recover()
    assert [s for s, _ in _instant_ops(engine)] == ["done"]
    for target, path in domblklist(new, inactive=True).items():
        assert backing_chain(path) == [path], target
        disk = next(d for d in backup.disks if d.target == target)
        assert same(path, repo / vm.uuid / backup.backup_id / disk.file), target
    assert not list((repo / vm.uuid / backup.backup_id).glob("hold-*.json"))


def test_an_instant_clone_is_finished_by_its_follower_and_pins_nothing(
    engine: Engine, stopped_vm: LabVm, labdir: Path, restored: list[str]
) -> None:
    """The CLI without --follow: it answers, and the follower it leaves in the
    background pulls every disk and finishes the copy, no other command needed."""
    vm = stopped_vm
    _fill(vm)
    group = engine.create(vm=vm.name, name="g")
    frozen = {r.device_id: r.install_path for r in group.refs}
    twin = f"{vm.name}-twin"
    restored.append(twin)
    db = f"sqlite:///{labdir / 'snapgroup.db'}"
    cli = [sys.executable, "-m", "snapgroup", "--db", db, "--connect", "qemu:///system"]
    done = subprocess.run(
        [*cli, "--json", "clone", group.uuid, "--name", twin, "--start", "--instant"],
        capture_output=True,
        text=True,
        env={**os.environ, "SNAPGROUP_NO_DAEMON": "1"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    instant = json.loads(done.stdout)["instant"]
    assert instant["copying"] and instant["followerPid"] > 0
    _wait(lambda: [s for s, _ in _instant_ops(engine)] == ["done"], "the follower")
    disks = domblklist(twin)
    for n, (target, path) in enumerate(sorted(disks.items())):
        assert backing_chain(path) == [path], target
        assert same(path, frozen[n]), target
    # The clone reads none of the group's files: the group is deleted like any other.
    assert engine.delete(group.uuid).error is None


def test_a_byte_flipped_in_the_repository_pauses_the_restored_vm(
    engine: Engine, stopped_vm: LabVm, labdir: Path, restored: list[str]
) -> None:
    """A repository file damaged in place (its size and headers intact) passes the
    checks made before the start, so the VM starts; the copy's checksums then find it:
    the guest is paused, the pull stopped, the command (--follow) fails naming the
    file, the operation is failed with the same words, verify-backup finds it too, and
    nothing in the repository was written."""
    vm = stopped_vm
    _fill(vm)
    repo = vm.directory / "repo"
    backup = engine.export(engine.create(vm=vm.name, name="g").uuid, to=str(repo)).manifest
    damaged = repo / vm.uuid / backup.backup_id / backup.disks[0].file
    with damaged.open("r+b") as f:  # inside the 40 MiB written: data, not metadata
        f.seek(20 << 20)
        byte = f.read(1)
        f.seek(20 << 20)
        f.write(bytes([byte[0] ^ 0xFF]))
    files = {p: p.read_bytes() for p in sorted(repo.rglob("*")) if p.is_file()}
    new = f"{vm.name}-instant"
    restored.append(new)
    db = f"sqlite:///{labdir / 'snapgroup.db'}"
    cli = [sys.executable, "-m", "snapgroup", "--db", db, "--connect", "qemu:///system"]
    done = subprocess.run(
        [
            *cli,
            "restore",
            "--from",
            str(repo),
            backup.backup_id,
            *("--as", new, "--disk-dir", str(vm.directory), "--start", "--instant"),
            *("--bandwidth", "2", "--follow"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "SNAPGROUP_NO_DAEMON": "1"},
        check=False,
    )
    assert done.returncode != 0
    assert "error SYS.1006" in done.stderr and str(damaged) in done.stderr, done.stderr
    assert "sha256 mismatch" in done.stderr and "paused" in done.stderr
    assert virsh("domstate", new).strip() == "paused"
    assert not _pulls(engine, new)  # the copy stopped
    (row,) = [r for r in engine.operations() if r.kind == "instant"]
    assert row.state == "failed" and row.detail is not None and str(damaged) in row.detail
    engine.recover()  # a failed copy is not driven on
    assert virsh("domstate", new).strip() == "paused"
    report = engine.verify_backup(at=str(repo), backup_id=backup.backup_id)
    assert [f.name for f in report.findings] == [f"{backup.backup_id}/{damaged.name}"]
    after = {p: p.read_bytes() for p in sorted(repo.rglob("*")) if p.is_file()}
    assert {p for p in after if p.name.startswith("hold-")}  # still held: the VM reads it
    assert {p: b for p, b in after.items() if not p.name.startswith("hold-")} == files
