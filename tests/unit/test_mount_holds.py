"""A `snapgroup mount` holds what it reads (ops/mount_holds.py), on the fakes: while a
group is mounted its delete is refused, while a backup is mounted the prune of any
backup its chain reads is refused (SYS.1006, naming the mountpoint), nothing changed;
umount releases them, and so does recover when the mount's process died."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from snapgroup.domain.errors import OperationError
from snapgroup.ops.guest_sources import FilesSource
from snapgroup.testing.fakes import lab_domain
from snapgroup.testing.guest_fakes import FakeGuestFiles
from tests.unit.conftest import Lab

VM = "a" * 32


@pytest.fixture
def guest(lab: Lab, tmp_path: Path) -> Iterator[FakeGuestFiles]:
    """vm1 with an ext4 filesystem on vdb, read by the fake appliance."""
    fake = FakeGuestFiles(lab.images.read)
    lab.engine.guest_files = fake
    (tmp_path / "vm").mkdir()
    lab_domain(lab.hv, directory=str(tmp_path / "vm"))
    _write(lab, "vdb", 0, "fs:ext4")
    yield fake
    fake.close()


def _write(lab: Lab, target: str, cluster: int, value: str) -> None:
    path = lab.hv.disk_path(VM, target)
    assert path is not None
    lab.images.write(path, cluster, value)


@pytest.fixture
def point(tmp_path: Path) -> str:
    (tmp_path / "mnt").mkdir()
    return str(tmp_path / "mnt")


def _holds(repo: str) -> list[str]:
    return sorted(p.parent.name for p in Path(repo).rglob("hold-*.json"))


def test_a_mounted_group_is_not_deleted_until_umount(
    lab: Lab, guest: FakeGuestFiles, point: str
) -> None:
    group = lab.engine.create(vm="vm1", name="g")
    lab.engine.create(vm="vm1", name="later")  # the group's files are merged on delete
    lab.engine.mount(FilesSource(group=group.uuid), point, fs="vdb")
    with pytest.raises(OperationError, match=f"is mounted at {point}") as refused:
        lab.engine.delete(group.uuid)
    assert refused.value.code == "SYS.1006" and "snapgroup umount" in refused.value.details
    plan = lab.engine.delete_plan(group.uuid).to_json()
    assert plan["wouldRefuse"] and plan["mounted"] == [point]
    assert group.uuid in {g.uuid for g in lab.engine.list_groups(vm="vm1")}
    lab.engine.umount(point)
    assert lab.engine.delete(group.uuid).error is None


def test_a_mounted_backup_is_not_pruned_until_umount(
    lab: Lab, guest: FakeGuestFiles, point: str, tmp_path: Path
) -> None:
    repo = str(tmp_path / "repo")
    _write(lab, "vdb", 1, "file:/f=one")
    full = lab.engine.export(lab.engine.create(vm="vm1", name="g1").uuid, to=repo).manifest
    _write(lab, "vdb", 1, "file:/f=two")
    inc = lab.engine.export(lab.engine.create(vm="vm1", name="g2").uuid, to=repo).manifest
    lab.engine.mount(FilesSource(backup=inc.backup_id, at=repo), point, fs="vdb")
    assert _holds(repo) == sorted([full.backup_id, inc.backup_id])  # its chain
    with pytest.raises(OperationError, match=f"backup {full.backup_id} is mounted at {point}"):
        lab.engine.prune_backups(at=repo, vm="vm1", keep=1)
    assert len(lab.engine.backups(at=repo)) == 2
    lab.engine.umount(point)
    assert _holds(repo) == [] and guest.mounts == {}
    assert lab.engine.prune_backups(at=repo, vm="vm1", keep=1).pruned


def test_a_mount_whose_process_died_is_released_by_recover(
    lab: Lab, guest: FakeGuestFiles, point: str, tmp_path: Path
) -> None:
    repo = str(tmp_path / "repo")
    group = lab.engine.create(vm="vm1", name="g1")
    backup = lab.engine.export(group.uuid, to=repo).manifest
    lab.engine.create(vm="vm1", name="g2")
    lab.engine.export(lab.engine.list_groups(vm="vm1")[-1].uuid, to=repo)
    lab.engine.mount(FilesSource(backup=backup.backup_id, at=repo), point, fs="vdb")
    other = tmp_path / "other"
    other.mkdir()
    lab.engine.mount(FilesSource(group=group.uuid), str(other), fs="vdb")
    guest.kill(point)  # kill -9 of the processes serving them
    guest.kill(str(other))
    assert _holds(repo) == [backup.backup_id]
    lab.engine.recover()
    assert _holds(repo) == []
    assert lab.engine.prune_backups(at=repo, vm="vm1", keep=1).pruned
    assert lab.engine.delete(group.uuid).error is None
    lab.engine.umount(point)  # the dead FUSE mount is still unmounted as before
    assert str(other) in guest.mounts


def test_another_hosts_mount_holds_until_that_host_releases_it(
    lab: Lab, guest: FakeGuestFiles, tmp_path: Path
) -> None:
    repo = str(tmp_path / "repo")
    full = lab.engine.export(lab.engine.create(vm="vm1", name="g1").uuid, to=repo).manifest
    lab.engine.export(lab.engine.create(vm="vm1", name="g2").uuid, to=repo)
    assert lab.engine.ctx.backup_store is not None
    store = lab.engine.ctx.backup_store(repo)
    store.hold_mount(full, "f" * 32, {"mountpoint": "/mnt/x", "host": "elsewhere"})
    with pytest.raises(OperationError, match="mounted at /mnt/x \\(on host elsewhere\\)"):
        lab.engine.prune_backups(at=repo, vm="vm1", keep=1)
    lab.engine.recover()  # not ours to release
    assert _holds(repo) == [full.backup_id]


def test_no_merge_rewrites_a_file_a_mounted_group_reads(
    lab: Lab, guest: FakeGuestFiles, point: str
) -> None:
    """The mounted group's snapshots and every file below them are pinned (as a clone's
    are): deleting an older group, or one of its snapshots, would commit the mounted
    group's file into it and move it; a later group's delete touches none of them."""
    older = lab.engine.create(vm="vm1", name="older")
    mounted = lab.engine.create(vm="vm1", name="mounted")
    later = lab.engine.create(vm="vm1", name="later")
    lab.engine.create(vm="vm1", name="latest")
    files = {r.install_path for r in mounted.refs}
    before = {path: lab.images.read(path) for path in files}
    lab.engine.mount(FilesSource(group=mounted.uuid), point, fs="vdb")
    with pytest.raises(OperationError, match=f"mount of group {mounted.uuid} at {point}"):
        lab.engine.delete(older.uuid)
    with pytest.raises(OperationError, match="snapgroup umount"):
        lab.engine.delete_snapshot(older.refs[0].volume_snapshot_uuid)
    assert lab.engine.delete(later.uuid).error is None  # above the mount: not pinned
    assert {path: lab.images.read(path) for path in files} == before
    assert lab.engine.get(mounted.uuid).refs == mounted.refs
    lab.engine.umount(point)
    assert lab.engine.delete(older.uuid).error is None
