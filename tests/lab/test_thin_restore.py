"""A thin restore (--keep-chain) as a new VM really starts, on real libvirtd + QEMU: its
QEMU runs as libvirt's user (not root) and reads its backing files inside a repository
that `export` made and that stays closed to every other local user (the manifests hold
domain XML). Restored with `--start` by the CLI (the command the issue ran), and started
by `virsh start` after a restore through the API; the disks read exactly what their
group held, and the repository verifies clean after QEMU ran on it (a `virsh
blockcommit` into it refused)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from snapgroup.api import Engine
from snapgroup.domain.backup_manifest import BackupManifest
from snapgroup.testing.labvm import LabVm
from tests.lab.tools import backing_chain, domblklist, export, same, sh, virsh, write_offline

pytestmark = pytest.mark.lab
NOBODY = 65534  # an unrelated local user


def qemu_ids() -> tuple[int, int]:
    """uid, gid libvirt runs QEMU as: the running daemon's DAC base label."""
    label = re.search(r"<baselabel type='qemu'>\+(\d+):\+(\d+)<", virsh("capabilities"))
    assert label, "libvirt reports no DAC base label"
    return int(label[1]), int(label[2])


def qemu_process_ids(name: str) -> tuple[int, int]:
    """Real uid and gid of the domain's running QEMU process."""
    pid = Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip()
    status = Path(f"/proc/{pid}/status").read_text()
    uid = re.search(r"^Uid:\s+(\d+)", status, re.M)
    gid = re.search(r"^Gid:\s+(\d+)", status, re.M)
    assert uid and gid and "qemu-system" in Path(f"/proc/{pid}/cmdline").read_text()
    return int(uid[1]), int(gid[1])


def can_read(uid: int, gid: int, path: Path) -> bool:
    """Does `path` open for reading as that user (no supplementary groups)?"""
    as_user = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
    return sh(*as_user, "head", "-c0", "--", str(path), check=False).returncode == 0


def can_list(uid: int, gid: int, directory: Path) -> bool:
    as_user = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
    return sh(*as_user, "ls", "--", str(directory), check=False).returncode == 0


def test_a_thin_restore_starts_as_qemus_user_on_a_closed_repository(
    engine: Engine, stopped_vm: LabVm, labdir: Path, restored: list[str]
) -> None:
    vm = stopped_vm
    repo = vm.directory / "repo"
    frozen: dict[str, dict[str, Path]] = {}
    backups = []
    for n in range(2):  # a full backup, then an increment on it: a chain of two
        tops = domblklist(vm.name, inactive=True)
        for disk, target in enumerate(sorted(tops)):
            write_offline(tops[target], 0x30 + 4 * n + disk, n)
        group = engine.create(vm=vm.name, name=f"t{n}")
        keep = vm.directory / f"frozen-{n}"
        keep.mkdir()
        frozen[group.uuid] = {
            target: export(ref.install_path, keep / f"{target}.qcow2")
            for target, ref in zip(
                sorted(tops), sorted(group.refs, key=lambda r: r.device_id), strict=True
            )
        }
        backups.append(engine.export(group.uuid, to=str(repo)).manifest)
    base, top = backups
    assert {d.base_backup_id for d in top.disks} == {base.backup_id}
    repo.chmod(0o700)  # made with umask 077: every directory of it 0700
    qemu_uid, qemu_gid = qemu_ids()
    assert qemu_uid != 0
    manifests = [repo / vm.uuid / m.backup_id / "manifest.json" for m in backups]
    assert not any(can_read(qemu_uid, qemu_gid, f) for m in backups for f in _files(repo, m))

    # the command, with --start: the engine starts it
    db = f"sqlite:///{labdir / 'snapgroup.db'}"
    cli = [sys.executable, "-m", "snapgroup", "--db", db, "--connect", "qemu:///system"]
    env = {**os.environ, "SNAPGROUP_NO_DAEMON": "1"}
    first = f"{vm.name}-thin"
    restored.append(first)
    thin = ["--as", first, "--disk-dir", str(vm.directory), "--keep-chain", "--start"]
    done = subprocess.run(
        [*cli, "restore", "--from", str(repo), top.backup_id, *thin],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "running" in virsh("domstate", first)
    # a second thin restore (of the base) through the API, started by virsh
    second = f"{vm.name}-thin2"
    restored.append(second)
    made = engine.restore(
        base.backup_id, source=str(repo), as_vm=second, disk_dir=str(vm.directory), keep_chain=True
    )
    assert made.state == "Stopped"
    virsh("start", second)
    # libvirt chowns the backing chain to QEMU's user: read-only files keep a commit out
    commit = sh(
        "virsh", "-c", "qemu:///system", "blockcommit", first, "vda", "--active", check=False
    )
    assert commit.returncode != 0 and "Permission denied" in commit.stderr
    for name in (first, second):
        assert "running" in virsh("domstate", name)
        assert qemu_process_ids(name) == (qemu_uid, qemu_gid)  # libvirt's user, not root
        virsh("destroy", name)

    for name, m in ((first, top), (second, base)):
        disks = domblklist(name, inactive=True)
        for target, path in disks.items():
            chain = backing_chain(path)
            assert len(chain) == 1 + len(next(d for d in m.disks if d.target == target).chain)
            assert all(layer.startswith(f"{repo}/") for layer in chain[1:])
            assert same(path, frozen[m.group_uuid][target]), (name, target)
    assert engine.verify_backup(at=str(repo)).clean  # QEMU changed nothing in it

    # closed: no one else reads a manifest or a disk file, or lists a directory
    for manifest in manifests:
        assert manifest.stat().st_mode & 0o077 == 0
        assert "system.posix_acl_access" not in os.listxattr(manifest)
        assert not can_read(NOBODY, NOBODY, manifest)
        assert not can_read(qemu_uid, qemu_gid, manifest)  # it may pass, not read
        assert not can_list(qemu_uid, qemu_gid, manifest.parent)
    for m in backups:
        for f in _files(repo, m):
            assert not can_read(NOBODY, NOBODY, f)
            assert f.stat().st_mode & 0o222 == 0  # read-only, whoever comes to own it
    assert not can_list(NOBODY, NOBODY, repo)


def _files(repo: Path, manifest: BackupManifest) -> list[Path]:
    return [repo / manifest.vm_uuid / manifest.backup_id / d.file for d in manifest.disks]
