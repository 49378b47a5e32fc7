"""Backups on real libvirtd + QEMU: a running VM's groups exported full then as
increments, local groups deleted, the VM reverted and exported again; every backup
restored as a new VM reads exactly its group (qemu-img compare against copies of the
group's own snapshot files taken before the local delete); a restored VM starts.
Then kill -9 of `snapgroup export / restore / prune-backups` at random moments: no half
backup is ever listed, the next run completes, verify-backup is clean; and a flipped
byte and a deleted base file are found by verify-backup and refused by restore."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from snapgroup.api import Engine
from snapgroup.domain.errors import OperationError
from snapgroup.domain.retention import Policy, Retention
from snapgroup.testing.labvm import LabVm
from tests.lab.tools import domblklist, export, same, sh, virsh, write_live, write_offline

pytestmark = pytest.mark.lab
TARGETS = ["vda", "vdb", "vdc"]


def macs(vm: str) -> list[str]:
    rows = virsh("domiflist", vm).splitlines()[2:]
    return [row.split()[-1] for row in rows if row.strip()]


def _frozen(engine: Engine, group_uuid: str, into: Path) -> dict[str, Path]:
    """Standalone copies of the group's snapshot files (its point in time), by target."""
    group = engine.get(group_uuid)
    into.mkdir(parents=True, exist_ok=True)
    out = {}
    for target, ref in zip(TARGETS, sorted(group.refs, key=lambda r: r.device_id), strict=True):
        out[target] = export(ref.install_path, into / f"{target}.qcow2")
    return out


def test_export_increments_revert_and_restore_every_backup(
    engine: Engine, running_vm: LabVm, restored: list[str]
) -> None:
    vm = running_vm
    nic = vm.directory / "nic.xml"
    nic.write_text("<interface type='user'><model type='virtio'/></interface>")
    virsh("attach-device", vm.name, str(nic), "--config")
    repo = str(vm.directory / "repo")
    keep = vm.directory / "frozen"
    groups: list[str] = []
    for n in range(4):  # g0 full, then 3 increments, each with one more MiB per disk
        for disk in range(3):
            write_live(vm.name, disk, 0x10 + 0x10 * n + disk, n)
        groups.append(engine.create(vm=vm.name, name=f"g{n}").uuid)
    frozen = {g: _frozen(engine, g, keep / g) for g in groups}
    backups = []
    for n, g in enumerate(groups):
        m = engine.export(g, to=repo).manifest
        backups.append(m)
        if n == 0:
            assert m.full and m.full_reason == "no export of an ancestor group in the repository"
        else:
            assert m.full_reason is None
            assert all(d.base_backup_id == backups[n - 1].backup_id for d in m.disks)
            assert all(d.bytes_written < 4 << 20 for d in m.disks)  # ~1 MiB changed per disk
    # local deletes change nothing in the repository
    sums = {m.backup_id: [d.sha256 for d in m.disks] for m in backups}
    for g in groups[1:3]:
        report = engine.delete(g)
        assert not report.error
    assert engine.verify_backup(at=repo).clean
    assert {m.backup_id: [d.sha256 for d in m.disks] for m in engine.backups(at=repo)} == sums

    # revert to g0, write, take g4: its base is g0's backup (g3's branch is not its past)
    vm.stop()
    engine.revert(groups[0])
    tops = domblklist(vm.name, inactive=True)
    for disk, target in enumerate(TARGETS):
        write_offline(tops[target], 0x90 + disk, 5)
    g4 = engine.create(vm=vm.name, name="g4").uuid
    frozen[g4] = _frozen(engine, g4, keep / g4)
    m4 = engine.export(g4, to=repo).manifest
    assert m4.full_reason is None
    assert {d.base_backup_id for d in m4.disks} == {backups[0].backup_id}
    backups.append(m4)
    groups.append(g4)
    # g0 deleted locally: the next export of g4 cannot find a base and says so
    assert not engine.delete(groups[0]).error
    again = engine.export(g4, to=repo).manifest
    assert again.full and "no export of an ancestor group" in (again.full_reason or "")
    assert engine.backups(at=repo)[-1].backup_id == again.backup_id
    for disk, target in zip(again.disks, TARGETS, strict=True):
        assert same(Path(repo) / vm.uuid / again.backup_id / disk.file, frozen[g4][target])

    # every backup restored as a new VM reads exactly its group's point in time
    for i, (m, g) in enumerate(zip(backups, groups, strict=True)):
        name = f"{vm.name}-r{i}"
        restored.append(name)
        made = engine.restore(
            m.backup_id,
            source=repo,
            as_vm=name,
            disk_dir=str(vm.directory),
            keep_chain=i == 2,
        )
        assert made.vm_uuid and made.vm_uuid != vm.uuid and made.state == "Stopped"
        disks = domblklist(name, inactive=True)
        assert sorted(disks) == TARGETS
        for target in TARGETS:
            assert Path(disks[target]).name != Path(tops[target]).name
            assert same(disks[target], frozen[g][target]), (i, target)
        assert len(macs(name)) == 1 and macs(name) != macs(vm.name)
    virsh("start", restored[-1])
    assert "running" in virsh("domstate", restored[-1])
    virsh("destroy", restored[-1])
    # --to-dir writes only the images
    out = vm.directory / "images"
    out.mkdir()
    only = engine.restore(backups[3].backup_id, source=repo, to_dir=str(out))
    assert only.vm_uuid is None
    for target in TARGETS:
        assert same(only.files[target], frozen[groups[3]][target])
    assert engine.verify_backup(at=repo).clean


# kill -9 -------------------------------------------------------------------------------


def _cli(vm: LabVm, db: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "snapgroup", "--db", db, "--connect", "qemu:///system", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "SNAPGROUP_NO_DAEMON": "1"}


def _run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, env=env or _env(), check=False)


def _killed_at_random(argv: list[str], rng: random.Random, upto: float) -> bool:
    """Start the command, SIGKILL it after a random delay; True if it was still running."""
    proc = subprocess.Popen(argv, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(rng.uniform(0.2, upto))
    alive = proc.poll() is None
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    return alive


def _listed_are_whole(engine: Engine, vm: LabVm, repo: str) -> list[str]:
    """Recover (as the next command would), then: every listed backup verifies clean and
    every directory in the repository but partials is a listed backup. Their ids."""
    engine.recover()
    if not Path(repo).exists():  # killed before the export made the repository
        return []
    listed = [m.backup_id for m in engine.backups(at=repo)]
    assert engine.verify_backup(at=repo).clean
    names = set(os.listdir(Path(repo) / vm.uuid)) if (Path(repo) / vm.uuid).exists() else set()
    assert set(listed) == {n for n in names if not n.startswith(".")}
    return listed


@pytest.mark.parametrize("seed", [1, 2])
def test_kill_9_of_export_restore_and_prune_leaves_nothing_half_done(
    engine: Engine, stopped_vm: LabVm, labdir: Path, restored: list[str], seed: int
) -> None:
    rng = random.Random(seed)
    vm = stopped_vm
    db = f"sqlite:///{labdir / 'snapgroup.db'}"
    repo = str(vm.directory / "repo")
    tops = domblklist(vm.name, inactive=True)
    groups = []
    for n in range(4):
        for disk, target in enumerate(TARGETS):
            write_offline(tops[target], 0x20 + n * 4 + disk, n)
        groups.append(engine.create(vm=vm.name, name=f"k{n}").uuid)
        tops = domblklist(vm.name, inactive=True)
    for g in groups:
        for _ in range(2):  # killed at random, then once at the publishing step
            _killed_at_random(_cli(vm, db, "export", g, "--to", repo), rng, 1.6)
            _listed_are_whole(engine, vm, repo)
        before = len(_listed_are_whole(engine, vm, repo))
        faulted = _run(
            _cli(vm, db, "export", g, "--to", repo),
            env={**_env(), "SNAPGROUP_FAULT_STEP": "export:publishing"},
        )
        assert faulted.returncode == -signal.SIGKILL
        assert len(_listed_are_whole(engine, vm, repo)) == before  # its partial is not listed
        assert _run(_cli(vm, db, "recover")).returncode == 0
        done = _run(_cli(vm, db, "export", g, "--to", repo, "--json"))
        assert done.returncode == 0, done.stderr
        _listed_are_whole(engine, vm, repo)
    assert not any(n.startswith(".partial") for n in os.listdir(Path(repo) / vm.uuid))

    # restore killed midway: no VM and no file left once recovered; then it completes
    name = f"{vm.name}-k{seed}"
    restored.append(name)
    last = _listed_are_whole(engine, vm, repo)[-1]
    before = set(os.listdir(vm.directory))
    restore = _cli(
        vm, db, "restore", "--from", repo, str(last), "--as", name, "--disk-dir", str(vm.directory)
    )
    for _ in range(2):
        _killed_at_random(restore, rng, 1.6)
        assert _run(_cli(vm, db, "recover")).returncode == 0
        if sh("virsh", "-c", "qemu:///system", "dominfo", name, check=False).returncode == 0:
            break  # it had finished: a complete VM
        assert set(os.listdir(vm.directory)) == before
    if sh("virsh", "-c", "qemu:///system", "dominfo", name, check=False).returncode != 0:
        ok = _run(restore)
        assert ok.returncode == 0, ok.stderr

    # prune killed at random, then at the commit step; recover finishes; all restorable
    expected = _listed_are_whole(engine, vm, repo)
    _killed_at_random(
        _cli(vm, db, "prune-backups", "--at", repo, "--vm", vm.name, "--keep", "3"), rng, 1.6
    )
    assert _run(_cli(vm, db, "recover")).returncode == 0
    faulted = _run(
        _cli(vm, db, "prune-backups", "--at", repo, "--vm", vm.name, "--keep", "2"),
        env={**_env(), "SNAPGROUP_FAULT_STEP": "prune-backups:commit"},
    )
    assert faulted.returncode in (0, -signal.SIGKILL)
    assert _run(_cli(vm, db, "recover")).returncode == 0
    left = _listed_are_whole(engine, vm, repo)
    assert left == expected[-2:]
    for b in left:
        out = vm.directory / f"img-{b}"
        out.mkdir()
        done = _run(_cli(vm, db, "restore", "--from", repo, str(b), "--to-dir", str(out)))
        assert done.returncode == 0, done.stderr


def test_a_flipped_byte_and_a_deleted_base_are_found_and_refused(
    engine: Engine, stopped_vm: LabVm, labdir: Path
) -> None:
    vm = stopped_vm
    db = f"sqlite:///{labdir / 'snapgroup.db'}"
    repo = vm.directory / "repo"
    tops = domblklist(vm.name, inactive=True)
    made = []
    for n in range(3):
        write_offline(tops["vdb"], 0x40 + n, n)
        g = engine.create(vm=vm.name, name=f"c{n}").uuid
        made.append(engine.export(g, to=str(repo)).manifest)
        tops = domblklist(vm.name, inactive=True)
    b0, b1, b2 = made
    vdb = b0.disks[1].volume_uuid
    flipped = repo / vm.uuid / b1.backup_id / f"{vdb}.qcow2"
    with open(flipped, "r+b") as f:
        f.seek(os.path.getsize(flipped) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    check = _run(_cli(vm, db, "verify-backup", "--at", str(repo)))
    assert check.returncode == 1
    assert f"{b1.backup_id}/{vdb}.qcow2: sha256 mismatch" in check.stdout
    assert b2.backup_id in check.stdout  # the backups it breaks
    with pytest.raises(OperationError, match=f"{flipped}: sha256 mismatch.*{b2.backup_id}"):
        engine.restore(b2.backup_id, source=str(repo), to_dir=str(vm.directory))
    assert engine.restore(b0.backup_id, source=str(repo), to_dir=str(vm.directory)).files

    base = repo / vm.uuid / b0.backup_id / f"{b0.disks[0].volume_uuid}.qcow2"
    base.unlink()
    check = _run(_cli(vm, db, "verify-backup", "--at", str(repo), "--json"))
    assert check.returncode == 1
    doc = json.loads(check.stdout)
    assert {
        "backupId": b0.backup_id,
        "volumeUuid": b0.disks[0].volume_uuid,
        "file": f"{b0.backup_id}/{b0.disks[0].volume_uuid}.qcow2",
        "problem": "missing",
    } in doc["findings"]
    assert set(doc["broken"]) == {b0.backup_id, b1.backup_id, b2.backup_id}
    refused = _run(_cli(vm, db, "restore", "--from", str(repo), b1.backup_id, "--as", "x-no"))
    assert refused.returncode == 1 and f"{base}: missing" in refused.stderr
    assert sh("virsh", "-c", "qemu:///system", "dominfo", "x-no", check=False).returncode != 0

    # b2's manifest truncated: not listed, never silently; verify names it; an export
    # still succeeds: on b1 (b2 is skipped), vda full (b0's file of it is gone).
    manifest = repo / vm.uuid / b2.backup_id / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:100])
    listing = _run(_cli(vm, db, "backups", "--at", str(repo)))
    assert listing.returncode == 0 and b2.backup_id not in listing.stdout
    assert f"warning: backup {b2.backup_id} of VM {vm.uuid} is not listed" in listing.stderr
    doc = json.loads(_run(_cli(vm, db, "--json", "backups", "--at", str(repo))).stdout)
    assert [d["backupId"] for d in doc["damaged"]] == [b2.backup_id]
    check = _run(_cli(vm, db, "verify-backup", "--at", str(repo)))
    assert check.returncode == 1 and f"BAD {b2.backup_id}/manifest.json: " in check.stdout
    g = engine.create(vm=vm.name, name="after").uuid
    again = _run(_cli(vm, db, "--json", "export", g, "--to", str(repo)))
    assert again.returncode == 0, again.stderr
    made = json.loads(again.stdout)["backup"]
    bases = {d["target"]: d["baseBackupId"] for d in made["disks"]}
    assert bases == {"vda": None, "vdb": b1.backup_id, "vdc": b1.backup_id}
    assert "vda: base backup" in made["fullReason"] and "missing" in made["fullReason"]


def test_a_policy_exports_each_group_it_takes_and_keeps_export_keep(
    engine: Engine, stopped_vm: LabVm
) -> None:
    """Compressed too (--export-compress): each export and the prune's merge restore
    exactly."""
    vm = stopped_vm
    repo = vm.directory / "repo"
    engine.set_policy(
        Policy("bk", Retention(hourly=5), vms=(vm.name,)),
        export_to=str(repo),
        export_keep=2,
        export_compress=True,
    )
    start = datetime(2026, 11, 30, 10, 30, tzinfo=UTC)
    taken = []
    for hour in range(3):
        now = start + timedelta(hours=hour)
        engine.clock = lambda now=now: now
        tops = domblklist(vm.name, inactive=True)
        write_offline(tops["vda"], 0x60 + hour, hour)
        report = engine.autosnap(now=now, parallel=1)
        (entry,) = [e for e in report.vms if e.vm.uuid == vm.uuid]
        assert entry.taken is not None and entry.export_error is None
        taken.append(entry.taken.uuid)
    kept = engine.backups(at=str(repo), vm=vm.name)
    assert [m.group_uuid for m in kept] == taken[1:]
    assert kept[0].full and not kept[1].full  # the oldest kept now holds the whole disk
    assert all(d.compressed for m in kept for d in m.disks)
    assert engine.verify_backup(at=str(repo)).clean
    for m in kept:
        out = vm.directory / f"p-{m.backup_id}"
        out.mkdir()
        files = engine.restore(m.backup_id, source=str(repo), to_dir=str(out)).files
        group = engine.get(m.group_uuid)
        for target, ref in zip(TARGETS, sorted(group.refs, key=lambda r: r.device_id), strict=True):
            assert same(files[target], ref.install_path)


def test_compressed_exports_of_a_running_vm_restore_exactly(
    engine: Engine, running_vm: LabVm, labdir: Path
) -> None:
    """export --compress (the CLI, --json) of a running VM, full then an increment over
    two layers: the manifest and `backups` say compressed, verify-backup is clean, the
    files are smaller than the data, and each backup restores exactly its group."""
    vm = running_vm
    db = f"sqlite:///{labdir / 'snapgroup.db'}"
    repo = vm.directory / "repo"
    groups = []
    for n in range(3):
        for disk in range(3):
            write_live(vm.name, disk, 0x60 + 0x10 * n + disk, n)
        groups.append(engine.create(vm=vm.name, name=f"z{n}").uuid)
    frozen = {g: _frozen(engine, g, vm.directory / "frozen" / g) for g in groups}
    made = []
    for g in (groups[0], groups[2]):  # groups[1] not exported: the increment has 2 layers
        out = _run(_cli(vm, db, "--json", "export", g, "--to", str(repo), "--compress"))
        assert out.returncode == 0, out.stderr
        made.append(json.loads(out.stdout)["backup"])
    full, inc = made
    assert full["full"] and not inc["full"]
    assert all(d["compressed"] for m in made for d in m["disks"])
    assert {d["baseBackupId"] for d in inc["disks"]} == {full["backupId"]}
    for m in engine.backups(at=str(repo)):
        assert all(d.compressed for d in m.disks)
        # 1 MiB of one byte written per disk per group: compressed far below that
        assert all(d.bytes_written < 1 << 20 for d in m.disks)
    assert engine.verify_backup(at=str(repo)).clean
    for m, g in zip(made, (groups[0], groups[2]), strict=True):
        out_dir = vm.directory / f"images-{m['backupId']}"
        out_dir.mkdir()
        files = engine.restore(m["backupId"], source=str(repo), to_dir=str(out_dir)).files
        for target in TARGETS:
            assert same(files[target], frozen[g][target]), (m["backupId"], target)
