"""Instant recovery into a filesystem too small, on real libvirtd + QEMU: a restore
whose pulls cannot fit is refused before anything is made; one whose filesystem fills
while QEMU pulls (ENOSPC inside the block job, which QEMU then ends unfinished) is said
stalled, not retried for ever: the VM runs on its thin disks, the operation stays open,
and once there is room `recover` finishes it, every disk equal to the backup's."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapgroup.api import Engine
from snapgroup.domain.errors import OperationError
from snapgroup.ops import notices
from snapgroup.ops.instant import CopyStalled
from snapgroup.testing.labvm import LabVm
from tests.lab.test_instant import _fill, _instant_ops, _pulls, _recover_through, _wait
from tests.lab.tools import backing_chain, domblklist, fill, same, sh, virsh

pytestmark = pytest.mark.lab


@contextlib.contextmanager
def _tmpfs(labdir: Path, size_mib: int) -> Iterator[Path]:
    mount = labdir / f"small-{uuid.uuid4().hex[:8]}"
    mount.mkdir()
    sh("mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0755", "tmpfs", str(mount))
    try:
        yield mount
    finally:
        sh("umount", "-l", str(mount), check=False)


def _backup(engine: Engine, vm: LabVm) -> tuple[Path, str]:
    _fill(vm)  # 40 MiB a disk
    repo = vm.directory / "repo"
    group = engine.create(vm=vm.name, name="g")
    return repo, engine.export(group.uuid, to=str(repo)).manifest.backup_id


def test_an_instant_restore_whose_copy_cannot_fit_is_refused_first(
    engine: Engine, stopped_vm: LabVm, labdir: Path, restored: list[str]
) -> None:
    repo, backup_id = _backup(engine, stopped_vm)
    new = f"{stopped_vm.name}-i"
    restored.append(new)
    with _tmpfs(labdir, 64) as small:  # three 40 MiB disks do not fit
        with pytest.raises(OperationError, match=r"copying 3 disk\(s\) local needs 1\d\d MiB"):
            engine.instant_restore(backup_id, source=str(repo), as_vm=new, disk_dir=str(small))
        assert os.listdir(small) == []
    assert virsh("list", "--all", "--name").split().count(new) == 0
    assert not list(repo.rglob("hold-*.json"))


def test_a_filesystem_filled_mid_copy_stalls_it_then_recover_finishes_it(
    engine: Engine, stopped_vm: LabVm, labdir: Path, restored: list[str]
) -> None:
    repo, backup_id = _backup(engine, stopped_vm)
    new = f"{stopped_vm.name}-i"
    restored.append(new)
    with _tmpfs(labdir, 256) as small:
        done, copying = engine.instant_restore(
            backup_id, source=str(repo), as_vm=new, disk_dir=str(small), bandwidth=1
        )
        _wait(lambda: set(_pulls(engine, new)) == {"vda"}, "vda's pull")
        filler = fill(small, leave=1 << 20)  # another writer takes the room
        sh("virsh", "-c", "qemu:///system", "blockjob", new, "vda", "--bandwidth", "0")
        _wait(lambda: not _pulls(engine, new), "QEMU to end the pull (ENOSPC)")
        assert backing_chain(done.files["vda"])[1:]  # unfinished: still thin
        with pytest.raises(CopyStalled, match="disk vda is stalled: copying 1 disk"):
            engine.instant_follow(copying.operation)
        assert [s for s, _ in _instant_ops(engine)] == ["running"]  # left open
        assert virsh("domstate", new).strip() == "running"
        with notices.collecting() as warnings:
            engine.recover()
        assert any("free space, then `snapgroup recover` goes on" in w for w in warnings)
        assert not _pulls(engine, new)  # not started again into a full filesystem
        filler.unlink()
        _recover_through(engine, new)
        assert [s for s, _ in _instant_ops(engine)] == ["done"]
        manifest = engine.backups(at=str(repo))[0]
        for target, path in domblklist(new).items():
            assert backing_chain(path) == [path], target
            disk = next(d for d in manifest.disks if d.target == target)
            assert same(path, repo / stopped_vm.uuid / backup_id / disk.file), target
        assert not list(repo.rglob("hold-*.json"))
        sh("virsh", "-c", "qemu:///system", "destroy", new, check=False)  # before the umount
