"""Backups under faults, on real libvirtd + QEMU + qemu-img (issue 15, adversarial).

The repository (or the restore target) on a small tmpfs that fills up midway: export,
restore --to-dir and prune-backups fail with a clear error naming the lack of space,
leave no half-written file, close their journal entry, change nothing on the VM, and
every remaining backup still restores exactly. And a middle backup's file moved away:
the next export never builds on the damaged chain, verify-backup names the file and
every backup it breaks."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from snapgroup.api import Engine
from snapgroup.domain.errors import SnapgroupError
from snapgroup.testing.labvm import LabVm, lab_directory
from tests.lab.tools import domblklist, export, fill, same, sh, write_offline

pytestmark = pytest.mark.lab
MIB = 1 << 20
TARGETS = ["vda", "vdb", "vdc"]
NO_SPACE = "No space left on device"


@pytest.fixture
def small_fs() -> Iterator[Callable[[int], Path]]:
    """Mounts a tmpfs of the given MiB (a filesystem the test can fill); all unmounted
    and removed afterwards."""
    mounts: list[Path] = []

    def mount(size_mib: int) -> Path:
        path = lab_directory(f"sg-efs-{uuid.uuid4().hex[:8]}")
        path.mkdir(parents=True)
        mounts.append(path)
        sh("mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0755", "tmpfs", str(path))
        return path

    yield mount
    for path in mounts:
        sh("umount", "-l", str(path), check=False)
        subprocess.run(["rm", "-rf", str(path)], check=False)


def _cli(db: str, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "snapgroup", "--db", db, "--connect", "qemu:///system", *args]
    env = {**os.environ, "SNAPGROUP_NO_DAEMON": "1"}
    return subprocess.run(argv, capture_output=True, text=True, env=env, check=False)


def _groups(engine: Engine, vm: LabVm, n: int, mib: int, first: int = 0) -> list[str]:
    """n groups, each after `mib` MiB more of a fresh pattern per disk."""
    made = []
    for k in range(first, first + n):
        tops = domblklist(vm.name, inactive=True)
        for disk, target in enumerate(TARGETS):
            for m in range(mib):
                write_offline(tops[target], 0x10 + 3 * k + disk, k * mib + m)
        made.append(engine.create(vm=vm.name, name=f"f{k}").uuid)
    return made


def _frozen(engine: Engine, groups: list[str], into: Path) -> dict[str, dict[str, Path]]:
    """Standalone copies of each group's snapshot files, by group then volume uuid."""
    out: dict[str, dict[str, Path]] = {}
    for g in groups:
        (into / g).mkdir(parents=True)
        out[g] = {
            r.volume_uuid: export(r.install_path, into / g / f"{r.volume_uuid}.qcow2")
            for r in engine.get(g).refs
        }
    return out


def _unchanged(engine: Engine, frozen: dict[str, dict[str, Path]]) -> None:
    for g, files in frozen.items():
        refs = {r.volume_uuid: r.install_path for r in engine.get(g).refs}
        assert refs.keys() == files.keys()
        for volume, copy in files.items():
            assert same(refs[volume], copy), (g, volume)


def _restores_exactly(
    engine: Engine, repo: Path, frozen: dict[str, dict[str, Path]], into: Path
) -> None:
    """Every listed backup, restored --to-dir, compares equal to its group's files."""
    for m in engine.backups(at=str(repo)):
        out = into / f"r-{m.backup_id}"
        out.mkdir(parents=True)
        files = engine.restore(m.backup_id, source=str(repo), to_dir=str(out)).files
        for d in m.disks:
            assert same(files[d.target], frozen[m.group_uuid][d.volume_uuid]), (m.backup_id, d)


def _last_op(engine: Engine, kind: str) -> tuple[str, str | None]:
    (op,) = [o for o in engine.operations(limit=200) if o.kind == kind][:1]
    return op.state, op.detail


def test_export_into_a_repository_that_fills_up_fails_cleanly_then_succeeds(
    engine: Engine, stopped_vm: LabVm, labdir: Path, small_fs: Callable[[int], Path]
) -> None:
    vm = stopped_vm
    db = f"sqlite:///{labdir / 'snapgroup.db'}"
    (g,) = _groups(engine, vm, 1, 4)  # ~12 MiB of data over three disks
    frozen = _frozen(engine, [g], labdir / "frozen")
    disks_before = domblklist(vm.name, inactive=True)
    repo = small_fs(32) / "repo"
    filler = fill(repo.parent, 6 * MIB)

    failed = _cli(db, "export", g, "--to", str(repo))

    assert failed.returncode == 1, (failed.stdout, failed.stderr)
    assert "HOST.1003" in failed.stderr or "SYS.1006" in failed.stderr, failed.stderr
    assert NO_SPACE in failed.stderr, failed.stderr
    vm_dir = repo / vm.uuid
    assert not vm_dir.exists() or os.listdir(vm_dir) == []  # no partial left
    assert engine.backups(at=str(repo)) == []
    assert engine.verify_backup(at=str(repo)).clean
    state, detail = _last_op(engine, "export")
    assert state == "rolled-back" and NO_SPACE in (detail or "")
    assert [o for o in engine.operations() if o.state == "running"] == []
    assert domblklist(vm.name, inactive=True) == disks_before
    assert [x.uuid for x in engine.list_groups()] == [g]
    _unchanged(engine, frozen)

    filler.unlink()
    done = _cli(db, "export", g, "--to", str(repo))
    assert done.returncode == 0, done.stderr
    (m,) = engine.backups(at=str(repo))
    assert m.full and m.group_uuid == g
    assert engine.verify_backup(at=str(repo)).clean
    _restores_exactly(engine, repo, frozen, labdir / "restored")


def test_an_increment_of_two_layers_that_runs_dry_leaves_nothing(
    engine: Engine, stopped_vm: LabVm, labdir: Path, small_fs: Callable[[int], Path]
) -> None:
    vm = stopped_vm
    (g0,) = _groups(engine, vm, 1, 1)
    repo = small_fs(32) / "repo"
    m0 = engine.export(g0, to=str(repo)).manifest
    _g1, g2 = _groups(engine, vm, 2, 3, first=1)  # g2's increment: two local layers
    frozen = _frozen(engine, [g0, g2], labdir / "frozen")
    filler = fill(repo.parent, 4 * MIB)

    with pytest.raises(SnapgroupError, match=NO_SPACE) as err:
        engine.export(g2, to=str(repo))

    assert err.value.code == "HOST.1003"
    assert sorted(os.listdir(repo / vm.uuid)) == [m0.backup_id]  # no partial, no layer copy
    assert [m.backup_id for m in engine.backups(at=str(repo))] == [m0.backup_id]
    assert engine.verify_backup(at=str(repo)).clean
    assert _last_op(engine, "export")[0] == "rolled-back"
    _unchanged(engine, frozen)
    filler.unlink()
    m2 = engine.export(g2, to=str(repo)).manifest
    assert m2.full_reason is None and {d.base_backup_id for d in m2.disks} == {m0.backup_id}
    assert engine.verify_backup(at=str(repo)).clean
    _restores_exactly(engine, repo, frozen, labdir / "r")


def test_restore_to_a_directory_that_fills_up_leaves_no_image(
    engine: Engine, stopped_vm: LabVm, labdir: Path, small_fs: Callable[[int], Path]
) -> None:
    vm = stopped_vm
    db = f"sqlite:///{labdir / 'snapgroup.db'}"
    (g,) = _groups(engine, vm, 1, 4)
    repo = labdir / "repo"
    m = engine.export(g, to=str(repo)).manifest
    target = small_fs(32)
    out = target / "images"
    out.mkdir()
    filler = fill(target, 6 * MIB)

    failed = _cli(db, "restore", "--from", str(repo), m.backup_id, "--to-dir", str(out))

    assert failed.returncode == 1, (failed.stdout, failed.stderr)
    assert "HOST.1003" in failed.stderr or "SYS.1006" in failed.stderr, failed.stderr
    assert NO_SPACE in failed.stderr, failed.stderr
    assert os.listdir(out) == []  # not one half-written image
    state, detail = _last_op(engine, "restore")
    assert state == "rolled-back" and NO_SPACE in (detail or "")
    assert engine.verify_backup(at=str(repo)).clean
    filler.unlink()
    files = engine.restore(m.backup_id, source=str(repo), to_dir=str(out)).files
    refs = {r.volume_uuid: r.install_path for r in engine.get(g).refs}
    for d in m.disks:
        assert same(files[d.target], refs[d.volume_uuid])


def test_prune_on_a_nearly_full_repository_fails_cleanly_and_every_backup_restores(
    engine: Engine, stopped_vm: LabVm, labdir: Path, small_fs: Callable[[int], Path]
) -> None:
    vm = stopped_vm
    db = f"sqlite:///{labdir / 'snapgroup.db'}"
    groups = _groups(engine, vm, 3, 2)  # a full backup, then two 2 MiB-per-disk increments
    frozen = _frozen(engine, groups, labdir / "frozen")
    repo = small_fs(48) / "repo"
    made = [engine.export(g, to=str(repo)).manifest for g in groups]
    assert [m.full for m in made] == [True, False, False]
    filler = fill(repo.parent, 256 << 10)  # the commit of 2 MiB per disk cannot fit

    failed = _cli(db, "prune-backups", "--at", str(repo), "--vm", vm.name, "--keep", "2")

    # Refused before anything is hidden: a commit that ran dry would leave a half merge
    # that makes every later backup unrestorable until a prune finishes it.
    assert failed.returncode == 1, (failed.stdout, failed.stderr)
    assert "SYS.1006" in failed.stderr and "no space left" in failed.stderr, failed.stderr
    assert "untouched" in failed.stderr, failed.stderr
    state, detail = _last_op(engine, "prune-backups")
    assert state == "failed" and "free" in (detail or "")
    assert [m.backup_id for m in engine.backups(at=str(repo))] == [m.backup_id for m in made]
    assert engine.verify_backup(at=str(repo)).clean
    _restores_exactly(engine, repo, frozen, labdir / "a")  # still full: restores go elsewhere

    filler.unlink()
    kept = engine.prune_backups(at=str(repo), vm=vm.name, keep=2).kept
    assert kept == tuple(m.backup_id for m in made[1:])
    assert engine.verify_backup(at=str(repo)).clean
    _restores_exactly(engine, repo, frozen, labdir / "b")


def test_a_prune_commit_that_runs_dry_midway_is_finished_by_the_next_prune(
    engine: Engine,
    stopped_vm: LabVm,
    labdir: Path,
    small_fs: Callable[[int], Path],
    at_step: Callable[[str, Callable[[], None]], None],
) -> None:
    vm = stopped_vm
    groups = _groups(engine, vm, 3, 2)
    frozen = _frozen(engine, groups, labdir / "frozen")
    repo = small_fs(48) / "repo"
    made = [engine.export(g, to=str(repo)).manifest for g in groups]
    fillers: list[Path] = []
    # The up-front check passes; the filesystem fills from outside once the commit began.
    at_step(
        "prune-backups:commit",  # the first disk's commit into the oldest backup's file
        lambda: fillers.append(fill(repo.parent, 64 << 10)),
    )

    with pytest.raises(SnapgroupError, match=NO_SPACE) as err:
        engine.prune_backups(at=str(repo), vm=vm.name, keep=2)

    assert err.value.code == "HOST.1003"
    assert _last_op(engine, "prune-backups")[0] == "failed"
    # The merge is left hidden: restore refuses (never reads a half-merged chain).
    listed = engine.backups(at=str(repo))
    assert [m.backup_id for m in listed] == [m.backup_id for m in made[1:]]
    with pytest.raises(SnapgroupError, match="interrupted"):
        engine.restore(made[2].backup_id, source=str(repo), to_dir=str(labdir))
    fillers[0].unlink()
    kept = engine.prune_backups(at=str(repo), vm=vm.name, keep=2).kept
    assert kept == tuple(m.backup_id for m in made[1:])
    assert not (repo / vm.uuid / made[0].backup_id).exists()
    assert engine.verify_backup(at=str(repo)).clean
    _restores_exactly(engine, repo, frozen, labdir / "r")


def test_a_middle_backup_file_moved_away_is_never_built_on(
    engine: Engine, stopped_vm: LabVm, labdir: Path
) -> None:
    vm = stopped_vm
    db = f"sqlite:///{labdir / 'snapgroup.db'}"
    groups = _groups(engine, vm, 3, 1)
    repo = labdir / "repo"
    b0, b1, b2 = (engine.export(g, to=str(repo)).manifest for g in groups)
    vol = b1.disks[1].volume_uuid
    moved = repo / vm.uuid / b1.backup_id / f"{vol}.qcow2"
    moved.rename(labdir / "aside.qcow2")

    check = _cli(db, "verify-backup", "--at", str(repo))
    assert check.returncode == 1
    assert f"{b1.backup_id}/{vol}.qcow2: missing" in check.stdout, check.stdout
    assert b1.backup_id in check.stdout and b2.backup_id in check.stdout
    report = engine.verify_backup(at=str(repo))
    assert set(report.broken) == {b1.backup_id, b2.backup_id}

    (g3,) = _groups(engine, vm, 1, 1, first=3)
    frozen = _frozen(engine, [g3], labdir / "frozen")
    m3 = engine.export(g3, to=str(repo)).manifest
    # The damaged disk is exported full and the manifest says why; the intact disks
    # still build on b2 (each disk carries its own base).
    chains = {d.volume_uuid: d.chain for d in m3.disks}
    assert chains[vol] == (m3.backup_id,)
    assert all(c == (*b2.disks[0].chain, m3.backup_id) for v, c in chains.items() if v != vol)
    assert b2.disks[0].chain == (b0.backup_id, b1.backup_id, b2.backup_id)
    assert m3.full_reason == f"vdb: base backup {b1.backup_id}'s file of this disk is missing"
    assert engine.verify_backup(at=str(repo), backup_id=m3.backup_id).clean
    _restores_exactly_one(engine, repo, m3.backup_id, frozen[g3], labdir / "r3")


def _restores_exactly_one(
    engine: Engine, repo: Path, backup_id: str, files: dict[str, Path], into: Path
) -> None:
    into.mkdir()
    m = engine.restore(backup_id, source=str(repo), to_dir=str(into))
    for d in engine.backups(at=str(repo))[-1].disks:
        assert same(m.files[d.target], files[d.volume_uuid])
