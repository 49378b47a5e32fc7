"""prune-backups on the real qemu-img and a real repository: the oldest backups merged
into their successors, every backup left reads exactly its group; a process stopped at
every journaled step of a prune (as kill -9 would) is finished by recover."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapgroup.adapters.backup_repo import BackupRepo
from snapgroup.adapters.qemu_img import QemuImg
from snapgroup.domain.errors import Busy, NotFound, OperationError
from snapgroup.infra.locks import backups_lock, vm_lock
from snapgroup.ops import export, journal, restore
from snapgroup.ops.backing_up import restore_to_dir, verify_backups
from snapgroup.ops.context import OpContext
from snapgroup.ops.exporting import export_group
from snapgroup.ops.journal import DONE
from snapgroup.ops.prune_backups import prune_backups
from snapgroup.ops.recovery import recover_pending
from snapgroup.store.db import Database
from snapgroup.testing.fakes import FakeHypervisor, FakeImageTool
from tests.adapters.test_ops_export import VM, VOLS, Lab, gid
from tests.adapters.test_qemu_img import same_view
from tests.adapters.tools import require_qemu_tools

require_qemu_tools()


class Killed(BaseException):
    """What SIGKILL does to the process, as an exception nothing catches."""


@pytest.fixture
def ctx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[OpContext]:
    monkeypatch.setenv("SNAPGROUP_LOCK_DIR", str(tmp_path / "locks"))
    db = Database(f"sqlite:///{tmp_path / 'sg.db'}")
    yield OpContext.make(
        hypervisor=FakeHypervisor(FakeImageTool()),
        images=QemuImg(),
        db=db,
        backup_store=BackupRepo,
        host="h1",
    )
    db.dispose()


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    (tmp_path / "local").mkdir()
    return Lab(tmp_path / "local")


def _chain_of_four(lab: Lab, repo: BackupRepo, branch: bool = False) -> dict[str, str]:
    """Backups of groups 1-4 (1 full, the rest increments); `branch`: group 4 is a sibling
    of group 2 (a revert to 1), so backup 1 has two children. backup id -> group."""
    made = {}
    lab.take(1, None, 0x10)
    lab.take(2, 1, 0x20)
    lab.take(3, 2, 0x30)
    lab.take(4, 1 if branch else 3, 0x40)
    for n in (1, 2, 3, 4):
        made[export_group(lab, repo, gid(n)).manifest.backup_id] = gid(n)
    return made


def _reads_its_group(lab: Lab, repo: BackupRepo, tmp_path: Path, made: dict[str, str]) -> None:
    assert verify_backups(lab.images, repo).clean
    for m in repo.backups(VM):
        out = tmp_path / f"r-{m.backup_id}-{len(list(tmp_path.iterdir()))}"
        out.mkdir()
        written = restore_to_dir(lab.images, repo, m.backup_id, str(out))
        for i, vol in enumerate(VOLS):
            assert same_view(Path(written[f"vd{'ab'[i]}"]), Path(lab.files[made[m.backup_id]][vol]))


@pytest.mark.parametrize("branch", [False, True])
def test_prune_keeps_every_remaining_backup_reading_its_group(
    tmp_path: Path, lab: Lab, ctx: OpContext, branch: bool
) -> None:
    repo = BackupRepo(str(tmp_path / "repo"))
    made = _chain_of_four(lab, repo, branch)
    oldest = list(made)[:2]
    report = prune_backups(ctx, at=repo.root, vm=VM, keep=2)
    assert list(report.pruned) == oldest
    assert [m.backup_id for m in repo.backups(VM)] == list(made)[2:]
    for m in repo.backups(VM):
        assert not set(oldest) & {b for d in m.disks for b in d.chain}
    assert any(m.full for m in repo.backups(VM))  # the new chain root holds the data
    _reads_its_group(lab, repo, tmp_path, made)
    assert not (Path(repo.root) / VM / oldest[0]).exists()


STEPS = ["begin", "hide", "rebase", "commit", "rename", "manifests", "remove"]


@pytest.mark.parametrize("step", STEPS)
def test_a_prune_stopped_at_any_step_is_finished_by_recover(
    tmp_path: Path,
    lab: Lab,
    ctx: OpContext,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
) -> None:
    repo = BackupRepo(str(tmp_path / "repo"))
    made = _chain_of_four(lab, repo, branch=True)  # backup 1 has two children: a rebase
    hits = {"n": 0}
    real = journal.checkpoint

    def kill_at(name: str) -> None:
        if name == f"prune-backups:{step}":
            hits["n"] += 1
            if hits["n"] == 2 or (step in ("begin", "manifests", "remove") and hits["n"] == 1):
                raise Killed
        real(name)

    monkeypatch.setattr(journal, "checkpoint", kill_at)
    with pytest.raises(Killed):
        prune_backups(ctx, at=repo.root, vm=VM, keep=2)
    monkeypatch.setattr(journal, "checkpoint", real)
    # nothing half-done is listed while the prune waits for recover
    listed = [m.backup_id for m in repo.backups(VM)]
    assert set(listed) <= set(made)
    (row,) = recover_pending(ctx)
    assert row.state == DONE, row.detail
    assert [m.backup_id for m in repo.backups(VM)] == list(made)[2:]
    _reads_its_group(lab, repo, tmp_path, made)
    assert recover_pending(ctx) == []


def test_a_repository_that_is_not_there_is_not_found(ctx: OpContext, tmp_path: Path) -> None:
    """Reading a mistyped path is an error, not an empty repository; nothing is made."""
    missing = str(tmp_path / "no-such-repository")
    backup = "1" * 32
    for call in (
        lambda: export.scan_backups(ctx, at=missing),
        lambda: export.verify_backup(ctx, at=missing),
        lambda: restore.restore(ctx, backup, source=missing, to_dir=str(tmp_path / "out")),
        lambda: prune_backups(ctx, at=missing, vm="vm1", keep=1),
    ):
        with pytest.raises(NotFound, match=f"no backup repository at {missing}"):
            call()
    assert not (tmp_path / "no-such-repository").exists()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["garbage", "missing"])
def test_a_damaged_manifest_is_named_never_stops_an_export_and_stops_a_prune(
    tmp_path: Path, lab: Lab, ctx: OpContext, damage: str
) -> None:
    """Backup 2's manifest is unreadable (or gone): listing skips it and says so; the
    next export (a child of 2, so of 3's branch too) builds on 1, which does not read
    through 2; verify names the manifest and every backup on it (2, 3); restore of 3
    is refused with it, of 1 and the new one works; prune refuses and changes nothing."""
    repo = BackupRepo(str(tmp_path / "repo"))
    made = _chain_of_four(lab, repo)  # 1 <- 2 <- 3 <- 4, one chain
    b1, b2, b3, b4 = list(made)
    manifest = Path(repo.root) / VM / b2 / "manifest.json"
    if damage == "garbage":
        manifest.write_text('{"format": "snapgroup-backup", "backupId": 7')
    else:
        manifest.unlink()
    listed, damaged = repo.scan(VM)
    assert [m.backup_id for m in listed] == [b1, b3, b4]
    assert [(d.backup_id, d.vm_uuid) for d in damaged] == [(b2, VM)]
    assert ("missing" if damage == "missing" else "not JSON") in damaged[0].problem
    assert [d.backup_id for d in export.scan_backups(ctx, at=repo.root)[1]] == [b2]
    by_name = export.scan_backups(ctx, at=repo.root, vm="vm")
    assert [[m.backup_id for m in by_name[0]], [d.backup_id for d in by_name[1]]] == [
        [b1, b3, b4],
        [b2],
    ]

    lab.take(5, 4, 0x50)
    new = export_group(lab, repo, gid(5)).manifest
    made[new.backup_id] = gid(5)
    assert new.full_reason is None  # 1 is an ancestor and reads through nothing damaged
    assert {d.base_backup_id for d in new.disks} == {b1}
    for vol in VOLS:
        assert same_view(Path(repo.file(new, vol)), Path(lab.files[gid(5)][vol]))

    report = verify_backups(lab.images, repo)
    assert [(f.backup_id, f.volume_uuid) for f in report.findings] == [(b2, None)]
    assert set(report.broken) == {b2, b3, b4}
    assert all(files == (f"{b2}/manifest.json",) for files in report.broken.values())
    one = verify_backups(lab.images, repo, b3)
    assert not one.clean and set(one.checked) == {b3, b2}
    alone = verify_backups(lab.images, repo, b2)  # the damaged one itself: a finding
    assert [f.name for f in alone.findings] == [f"{b2}/manifest.json"]
    out = tmp_path / "restore"
    out.mkdir()
    with pytest.raises(OperationError, match=f"{b2}/manifest.json"):
        restore_to_dir(lab.images, repo, b3, str(out))
    assert not list(out.iterdir())
    for backup in (b1, new.backup_id):
        into = tmp_path / f"r-{backup}"
        into.mkdir()
        written = restore_to_dir(lab.images, repo, backup, str(into))
        for i, vol in enumerate(VOLS):
            assert same_view(Path(written[f"vd{'ab'[i]}"]), Path(lab.files[made[backup]][vol]))

    sums = {m.backup_id: [d.sha256 for d in m.disks] for m in repo.backups(VM)}
    with pytest.raises(OperationError, match=f"{b2}.*Nothing was pruned"):
        prune_backups(ctx, at=repo.root, vm=VM, keep=1)
    assert {m.backup_id: [d.sha256 for d in m.disks] for m in repo.backups(VM)} == sums
    assert verify_backups(lab.images, repo, new.backup_id).clean


@pytest.mark.parametrize("where", ["oldest", "its child"])
def test_a_prune_never_merges_a_flipped_byte_into_a_kept_backup(
    tmp_path: Path, lab: Lab, ctx: OpContext, where: str
) -> None:
    """A byte flipped in the backup being merged (or in the child it merges into): a
    merge recomputes the checksums of what it writes, so it would bless the damage.
    The prune is refused naming the file; nothing changes; verify still reports it."""
    repo = BackupRepo(str(tmp_path / "repo"))
    made = _chain_of_four(lab, repo)
    b1, b2 = list(made)[:2]
    target = b1 if where == "oldest" else b2
    (m,) = [x for x in repo.backups(VM) if x.backup_id == target]
    damaged = Path(repo.file(m, VOLS[1]))
    with open(damaged, "r+b") as f:
        f.seek(damaged.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x01]))
    before = {x.backup_id: [d.sha256 for d in x.disks] for x in repo.backups(VM)}
    with pytest.raises(OperationError, match=f"{damaged}: sha256 mismatch.*Nothing was pruned"):
        prune_backups(ctx, at=repo.root, vm=VM, keep=2)
    assert {x.backup_id: [d.sha256 for d in x.disks] for x in repo.backups(VM)} == before
    assert repo.pending_prunes(VM) == []
    report = verify_backups(lab.images, repo)
    assert [(f.backup_id, f.volume_uuid) for f in report.findings] == [(target, VOLS[1])]


def test_disks_restored_with_keep_chain_hold_their_backup_until_flattened(
    tmp_path: Path, lab: Lab, ctx: OpContext
) -> None:
    """A disk restored with --keep-chain reads the repository's files: pruning its backup
    would write into them and then remove them. The prune is refused naming the disks;
    once they are flattened the hold is stale and the prune goes on. A disk restored
    from a later backup reads the same after its base is merged (the child's file is
    replaced by one with the same view)."""
    repo = BackupRepo(str(tmp_path / "repo"))
    made = _chain_of_four(lab, repo)
    b1, b2 = list(made)[:2]
    held: dict[str, dict[str, str]] = {}
    for backup in (b1, b2):
        into = tmp_path / f"thin-{backup}"
        into.mkdir()
        held[backup] = dict(
            restore.restore(ctx, backup, source=repo.root, to_dir=str(into), keep_chain=True).files
        )
    assert set(repo.holds(repo.get(b1))) and set(repo.holds(repo.get(b2)))
    sums = {m.backup_id: [d.sha256 for d in m.disks] for m in repo.backups(VM)}
    with pytest.raises(OperationError, match=f"{b1} is the base of disks restored") as refused:
        prune_backups(ctx, at=repo.root, vm=VM, keep=3)
    assert all(path in refused.value.details for path in held[b1].values())
    assert {m.backup_id: [d.sha256 for d in m.disks] for m in repo.backups(VM)} == sums

    for path in held[b1].values():  # flattened: it no longer reads the repository
        ctx.images.set_backing(path, backing_name=None, safe=True)
    assert list(prune_backups(ctx, at=repo.root, vm=VM, keep=3).pruned) == [b1]
    for backup, files in held.items():
        for i, vol in enumerate(VOLS):
            assert same_view(Path(files[f"vd{'ab'[i]}"]), Path(lab.files[made[backup]][vol]))
    assert verify_backups(lab.images, repo).clean

    with pytest.raises(OperationError, match=f"{b2} is the base of disks restored"):
        prune_backups(ctx, at=repo.root, vm=VM, keep=2)
    for path in held[b2].values():  # removed: the hold is stale and dropped
        os.remove(path)
    assert list(prune_backups(ctx, at=repo.root, vm=VM, keep=2).pruned) == [b2]
    _reads_its_group(lab, repo, tmp_path, made)


def test_a_prune_and_a_restore_of_one_vms_backups_never_overlap(
    tmp_path: Path, lab: Lab, ctx: OpContext
) -> None:
    """Each takes the VM's backups lock (a restore reading a backup a prune merges would
    copy a view that changes under it); the other waits, or fails Busy."""
    repo = BackupRepo(str(tmp_path / "repo"))
    made = _chain_of_four(lab, repo)
    into = tmp_path / "out"
    into.mkdir()
    with backups_lock(VM):
        with pytest.raises(Busy, match="prune or restore"):
            prune_backups(ctx, at=repo.root, vm=VM, keep=1)
        with pytest.raises(Busy, match="prune or restore"):
            restore.restore(ctx, next(iter(made)), source=repo.root, to_dir=str(into))
        with vm_lock(VM):  # the VM's own lock is another: groups go on being taken
            pass
    assert not list(into.iterdir())
    assert [m.backup_id for m in repo.backups(VM)] == list(made)


def test_a_read_only_repository_is_verified_and_restored_but_never_written(
    tmp_path: Path, lab: Lab, ctx: OpContext
) -> None:
    """A repository mounted read-only (a WORM share, a write-protected disk): verify is
    clean, a restore (thin too: no hold can be written, and no prune through this mount
    can change it) reads exactly its group; an export or a prune fails cleanly (SYS.1006)
    with the filesystem's reason."""
    writable, mount = tmp_path / "repo", tmp_path / "ro"
    made = _chain_of_four(lab, BackupRepo(str(writable)))
    mount.mkdir()
    subprocess.run(["mount", "--bind", str(writable), str(mount)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(mount)], check=True)
        repo = BackupRepo(str(mount))
        assert verify_backups(lab.images, repo).clean
        for keep_chain in (False, True):
            into = tmp_path / f"out-{keep_chain}"
            into.mkdir()
            newest = list(made)[-1]
            done = restore.restore(
                ctx, newest, source=repo.root, to_dir=str(into), keep_chain=keep_chain
            )
            for i, vol in enumerate(VOLS):
                view = Path(lab.files[made[newest]][vol])
                assert same_view(Path(done.files[f"vd{'ab'[i]}"]), view)
        lab.take(5, 4, 0x50)
        with pytest.raises(OperationError, match="Read-only file system"):
            export_group(lab, repo, gid(5))
        with pytest.raises(OperationError, match="Read-only file system"):
            prune_backups(ctx, at=repo.root, vm=VM, keep=1)
    finally:
        subprocess.run(["umount", str(mount)], check=False)
    assert [m.backup_id for m in BackupRepo(str(writable)).backups(VM)] == list(made)
