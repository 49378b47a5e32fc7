"""Instant recovery on the fakes (ops/instant.py): the new VM runs at once on thin
overlays, one pull a disk copies them local; the backup stays held (prune refuses) until
every pull has ended; recover finishes a copy whatever cut it short."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from snapgroup.adapters.backup_repo import BackupRepo
from snapgroup.domain.errors import HypervisorError, OperationError
from snapgroup.domain.models import VmState
from snapgroup.ops import notices
from snapgroup.testing.fakes import lab_domain
from tests.unit.conftest import Killed, Lab

VM = "a" * 32


class _Repo(BackupRepo):
    """The real repository, but QEMU's user is not let in (no QEMU runs here)."""

    def open_to_qemu(self, files: Sequence[str]) -> None:
        pass


@pytest.fixture
def backed_up(lab: Lab, tmp_path: Path) -> tuple[str, list[str]]:
    """A repository with two backups of vm1 (full, incremental): (repo, backup ids)."""
    lab.engine.ctx.backup_store = _Repo
    (tmp_path / "vm").mkdir()
    lab_domain(lab.hv, directory=str(tmp_path / "vm"))
    repo = str(tmp_path / "repo")
    ids = []
    for n in range(2):
        for disk in lab.hv.domains[VM].disks:
            assert disk.path is not None
            lab.images.write(disk.path, n + 1, f"{disk.target}@{n}")
        group = lab.engine.create(vm="vm1", name=f"g{n}")
        ids.append(lab.engine.export(group.uuid, to=repo).manifest.backup_id)
    for backup in lab.engine.backups(at=repo):  # the fake images know them at their place
        for disk in backup.disks:
            lab.images.chain(str(Path(repo) / VM / backup.backup_id / disk.file))
    return repo, ids


def _operation(lab: Lab, uuid: str) -> str:
    (row,) = [r for r in lab.engine.operations() if r.uuid == uuid]
    return row.state


def _pulling(lab: Lab) -> list[str]:
    return sorted(t for (_, t) in lab.hv.pulls)


def _copy_through(lab: Lab, uuid: str) -> list[list[str]]:
    """QEMU ends each pull, recover (any command's) starts the next: the pulls seen."""
    seen = []
    while _operation(lab, uuid) == "running":
        seen.append(_pulling(lab))
        lab.hv.finish_pulls()
        lab.engine.recover()
    return seen


def test_the_vm_runs_at_once_and_its_disks_become_local(
    lab: Lab, backed_up: tuple[str, list[str]], tmp_path: Path
) -> None:
    repo, (b1, _) = backed_up  # the oldest: the one a prune merges first
    want = {
        d.target: lab.images.read(str(Path(repo) / VM / b1 / f"{d.volume_uuid}.qcow2"))
        for d in lab.engine.backups(at=repo)[0].disks
    }
    done, copying = lab.engine.instant_restore(b1, source=repo, as_vm="new")
    assert done.state == "Running" and not copying.done
    assert _pulling(lab) == ["vda"]  # one at a time (QEMU 7.2 crashes on parallel pulls)
    for target, path in done.files.items():  # thin: read through the repository
        assert lab.images.images[path].backing is not None
        assert lab.images.read(path) == want[target]
    # While the copy runs, the backup is held (prune refuses) and recover leaves it be.
    with pytest.raises(OperationError, match="keep-chain"):
        lab.engine.prune_backups(at=repo, vm="vm1", keep=1)
    lab.engine.recover()
    assert _operation(lab, copying.operation) == "running"
    assert _pulling(lab) == ["vda"]  # left to run
    assert _copy_through(lab, copying.operation) == [["vda"], ["vdb"], ["vdc"]]
    assert lab.hv.called("flush_disks")  # made durable before the hold goes
    for target, path in done.files.items():  # standalone, and the backup's data
        assert lab.images.images[path].backing is None
        assert lab.images.read(path) == want[target]
    assert lab.engine.prune_backups(at=repo, vm="vm1", keep=1).pruned  # no hold left


def test_a_killed_start_and_a_lost_qemu_are_finished_by_recover(
    lab: Lab, backed_up: tuple[str, list[str]], die_at: list[str]
) -> None:
    repo, (_, b2) = backed_up
    die_at.append("instant:pull:vdb")  # vda copied, killed before vdb's pull starts
    with pytest.raises(Killed):
        _, copying = lab.engine.instant_restore(b2, source=repo, as_vm="new")
        lab.hv.finish_pulls()
        lab.engine.instant_follow(copying.operation)
    (new,) = [u for u, d in lab.hv.domains.items() if d.name == "new"]
    assert _pulling(lab) == []
    lab.engine.recover()  # the next disk's pull is started
    assert _pulling(lab) == ["vdb"]
    # The host restarts: QEMU and its jobs are gone, the VM is stopped.
    lab.hv.pulls.clear()
    lab.hv.domains[new].state = VmState.STOPPED
    lab.engine.recover()  # made standalone offline
    for disk in lab.hv.domains[new].disks:
        assert disk.path is not None and lab.images.images[disk.path].backing is None
    (op,) = [r for r in lab.engine.operations() if r.kind == "instant"]
    assert op.state == "done"


def test_an_instant_clone_stops_pinning_the_group_once_copied(
    lab: Lab, backed_up: tuple[str, list[str]]
) -> None:
    group = lab.engine.list_groups(vm="vm1")[-1]
    made, copying = lab.engine.instant_clone(group.uuid, name="twin")
    assert made.state == "Running" and not copying.done
    assert lab.engine.delete_plan(group.uuid).to_json()["wouldRefuse"]  # the clone reads it
    assert len(_copy_through(lab, copying.operation)) == 3
    report = lab.engine.delete(group.uuid)
    assert report.error is None
    for disk in lab.hv.domains[made.uuid].disks:
        assert disk.path is not None and lab.images.read(disk.path)


class _CountingRepo(_Repo):
    """Each file's checksum read is logged in the hypervisor's call log, so that a test
    sees it in order with the VM's start."""

    calls: list[tuple[str, tuple[object, ...]]] = []

    def file_problem(self, path: str, sha256: str, piece_size: int | None) -> str | None:
        self.calls.append(("checksum", (path,)))
        return super().file_problem(path, sha256, piece_size)


def _repo_bytes(repo: str) -> dict[str, bytes]:
    """Every file of the repository but the holds (restore writes those), by path."""
    return {
        str(p): p.read_bytes()
        for p in sorted(Path(repo).rglob("*"))
        if p.is_file() and not p.name.startswith("hold-")
    }


def test_the_vm_starts_before_the_chain_is_read_and_the_copy_reads_it_first(
    lab: Lab, backed_up: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the start only the cheap checks (sizes, headers); the checksums are the
    copy's first work, and it finishes nothing before they match."""
    repo, (_, b2) = backed_up
    monkeypatch.setattr(_CountingRepo, "calls", lab.hv.calls)
    lab.engine.ctx.backup_store = _CountingRepo
    done, copying = lab.engine.instant_restore(b2, source=repo, as_vm="new")
    assert done.state == "Running"
    names = [name for name, _ in lab.hv.calls]
    assert "start" in names and "checksum" not in names
    lab.engine.recover()  # the copy's driver: the checksums first, vda's pull left be
    assert _steps(lab) == [("running", "verified")] and _pulling(lab) == ["vda"]
    assert _copy_through(lab, copying.operation) == [["vda"], ["vdb"], ["vdc"]]
    names = [name for name, _ in lab.hv.calls]
    assert names.index("start") < names.index("checksum") < names.index("flush_disks")
    assert _steps(lab) == [("done", "pull:vdc")]


def _steps(lab: Lab) -> list[tuple[str, str]]:
    return [(r.state, r.step) for r in lab.engine.operations() if r.kind == "instant"]


@pytest.mark.parametrize("driver", ["follower", "recover"])
def test_a_flipped_byte_pauses_the_vm_and_fails_the_copy(
    lab: Lab, backed_up: tuple[str, list[str]], driver: str
) -> None:
    """A repository file damaged in place (same size, one byte changed) passes the cheap
    checks: the VM starts. The copy's checksums find it: the guest is paused, its pulls
    stopped, the operation failed naming the file; nothing in the repository written."""
    repo, (b1, b2) = backed_up
    damaged = next(Path(repo, VM, b1).glob("*.qcow2"))  # the base the increment reads
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    before = _repo_bytes(repo)
    done, copying = lab.engine.instant_restore(b2, source=repo, as_vm="new")
    assert done.state == "Running" and _pulling(lab) == ["vda"] and done.vm_uuid
    if driver == "follower":
        with pytest.raises(OperationError, match="sha256 mismatch") as refused:
            lab.engine.instant_follow(copying.operation)
        said = refused.value.details
    else:
        with notices.collecting() as warned:
            lab.engine.recover()
        (said,) = warned
    assert str(damaged) in said and "paused" in said
    assert lab.hv.domains[done.vm_uuid].state is VmState.PAUSED
    assert _pulling(lab) == [] and lab.hv.called("cancel_block_job")
    ((state, step),) = _steps(lab)
    assert (state, step) == ("failed", "verify")
    (row,) = [r for r in lab.engine.operations() if r.kind == "instant"]
    assert row.detail == said
    assert _repo_bytes(repo) == before  # nothing written into it
    lab.engine.recover()  # a failed copy is not driven on
    assert lab.hv.domains[done.vm_uuid].state is VmState.PAUSED
    report = lab.engine.verify_backup(at=repo, backup_id=b2)
    assert not report.clean and damaged.name in report.findings[0].name


def test_a_file_of_another_size_is_refused_before_anything_is_made(
    lab: Lab, backed_up: tuple[str, list[str]]
) -> None:
    repo, (b1, b2) = backed_up
    damaged = next(Path(repo, VM, b1).glob("*.qcow2"))
    with damaged.open("ab") as f:
        f.write(b"\0")
    with pytest.raises(OperationError, match="bytes, its manifest says"):
        lab.engine.instant_restore(b2, source=repo, as_vm="new")
    assert "new" not in {d.name for d in lab.hv.domains.values()}
    assert not lab.hv.called("start") and not _steps(lab)


def test_a_stopped_vm_on_a_damaged_chain_is_not_made_standalone(
    lab: Lab, backed_up: tuple[str, list[str]]
) -> None:
    """The host restarted before the copy read the checksums: recover checks them
    before it flattens anything offline; a damaged chain is copied nowhere."""
    repo, (b1, b2) = backed_up
    damaged = next(Path(repo, VM, b1).glob("*.qcow2"))
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    done, _ = lab.engine.instant_restore(b2, source=repo, as_vm="new")
    assert done.vm_uuid is not None
    lab.hv.pulls.clear()
    lab.hv.domains[done.vm_uuid].state = VmState.STOPPED
    with notices.collecting() as warned:
        lab.engine.recover()
    assert len(warned) == 1 and "is left stopped, not copied" in warned[0]
    assert _steps(lab) == [("failed", "verify")]
    for path in done.files.values():  # still thin: nothing was flattened from it
        assert lab.images.images[path].backing is not None


def test_a_pause_that_fails_still_refuses_the_copy_and_says_so(
    lab: Lab, backed_up: tuple[str, list[str]]
) -> None:
    repo, (b1, b2) = backed_up
    damaged = next(Path(repo, VM, b1).glob("*.qcow2"))
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    _, copying = lab.engine.instant_restore(b2, source=repo, as_vm="new")
    lab.hv.fail["pause"] = HypervisorError("libvirt said no")
    with pytest.raises(OperationError, match=r"could not be paused \(libvirt said no\): stop it"):
        lab.engine.instant_follow(copying.operation)
    assert _steps(lab) == [("failed", "verify")]  # not driven on by the next recover
