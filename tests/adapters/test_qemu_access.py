"""adapters/qemu_access.py on a real repository (real qemu-img, setfacl, setpriv): QEMU's
user is let through to a thin restore's chain and nowhere else; no other user gains
anything; a read-only repository is never written and refused only when QEMU's user
cannot read it already. Needs root (it acts as other users)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapgroup.adapters.backup_repo import BackupRepo
from snapgroup.adapters.qemu_access import QemuUser, open_to, qemu_user
from snapgroup.domain.backup_manifest import BackupManifest
from snapgroup.domain.errors import OperationError
from snapgroup.ops.exporting import export_group
from snapgroup.testing.labvm import LAB_ROOT
from tests.adapters.test_ops_export import Lab, gid
from tests.adapters.tools import require_qemu_tools

require_qemu_tools()
if os.geteuid() != 0:
    pytest.skip("acts as other users: needs root", allow_module_level=True)

QEMU = QemuUser("", 64999, 64999, ())  # no passwd entry: nobody else is it
NOBODY = 65534


def can_read(uid: int, path: str | Path) -> bool:
    as_user = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
    done = subprocess.run([*as_user, "head", "-c0", "--", str(path)], capture_output=True)
    return done.returncode == 0


def can_list(uid: int, directory: str | Path) -> bool:
    as_user = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
    return (
        subprocess.run([*as_user, "ls", "--", str(directory)], capture_output=True).returncode == 0
    )


def chain(repo: BackupRepo, m: BackupManifest) -> list[str]:
    return [repo.member_file(m.vm_uuid, b, d.volume_uuid) for d in m.disks for b in d.chain]


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory every user may pass through, as a repository's parent must be for
    QEMU: not pytest's tmp_path, which sits in a 0700 directory."""
    LAB_ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="sg-access-", dir=LAB_ROOT))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def made(base: Path, lab: Lab) -> tuple[BackupRepo, list[BackupManifest]]:
    """Three backups (a full, two increments) in a repository whose every directory is
    0700 and whose files are 0600 (an export under umask 077)."""
    repo = BackupRepo(str(base / "repo"))
    out = []
    for n in (1, 2, 3):
        lab.take(n, n - 1 if n > 1 else None, 0x10 * n)
        out.append(export_group(lab, repo, gid(n)).manifest)
    for directory, _, files in os.walk(repo.root):
        os.chmod(directory, 0o700)
        for name in files:
            os.chmod(os.path.join(directory, name), 0o600)
    return repo, out


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    (tmp_path / "local").mkdir()
    return Lab(tmp_path / "local")


def test_qemus_user_reads_the_chain_and_nothing_else(
    made: tuple[BackupRepo, list[BackupManifest]],
) -> None:
    repo, (b1, b2, b3) = made
    files = chain(repo, b2)  # b1's files and b2's
    assert not any(can_read(QEMU.uid, f) for f in files)
    open_to(repo.root, files, QEMU)
    open_to(repo.root, files, QEMU)  # again: nothing more to do
    assert all(can_read(QEMU.uid, f) for f in files)
    for f in files:
        assert os.stat(f).st_mode & 0o227 == 0  # no write bit, nothing for others
    assert not any(can_read(QEMU.uid, f) for f in chain(repo, b3) if f not in files)
    for m in (b1, b2, b3):
        directory = repo.backup_dir(m.vm_uuid, m.backup_id)
        assert not can_read(QEMU.uid, os.path.join(directory, "manifest.json"))
        assert not can_list(QEMU.uid, directory)  # search, never read
        assert os.listxattr(os.path.join(directory, "manifest.json")) == []
        assert os.stat(os.path.join(directory, "manifest.json")).st_mode & 0o077 == 0
    assert not can_list(QEMU.uid, repo.root)
    for path in [repo.root, *files, *chain(repo, b3)]:
        assert not can_read(NOBODY, path)  # no one else gained anything
    assert not can_list(NOBODY, repo.root)


def test_a_read_only_repository_is_refused_only_when_qemu_cannot_read_it(
    base: Path, made: tuple[BackupRepo, list[BackupManifest]]
) -> None:
    repo, (_, b2, b3) = made
    mount = base / "ro"
    mount.mkdir()
    subprocess.run(["mount", "--bind", repo.root, str(mount)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(mount)], check=True)
        ro = BackupRepo(str(mount))
        before = {f: (os.stat(f).st_mode, os.stat(f).st_ctime_ns) for f in chain(ro, b2)}
        with pytest.raises(OperationError, match=r"cannot read .*: the repository is read-only"):
            open_to(ro.root, chain(ro, b2), QEMU)
        assert {f: (os.stat(f).st_mode, os.stat(f).st_ctime_ns) for f in chain(ro, b2)} == before
        open_to(repo.root, chain(repo, b2), QEMU)  # opened where it is written
        open_to(ro.root, chain(ro, b2), QEMU)
        assert all(can_read(QEMU.uid, f) for f in chain(ro, b2))
        with pytest.raises(
            OperationError, match=f"cannot read {ro.file(b3, b3.disks[0].volume_uuid)}"
        ):
            open_to(ro.root, chain(ro, b3), QEMU)  # b3's own files were never opened
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_closed_directory_above_the_repository_is_named(base: Path, lab: Lab) -> None:
    above = base / "closed"
    above.mkdir(mode=0o700)
    repo = BackupRepo(str(above / "repo"))
    lab.take(1, None, 0x10)
    m = export_group(lab, repo, gid(1)).manifest
    with pytest.raises(OperationError, match=f"a directory above {repo.root} must let it"):
        open_to(repo.root, chain(repo, m), QEMU)
    assert oct(above.stat().st_mode & 0o777) == oct(0o700)  # not ours to open


def test_qemus_user_comes_from_qemu_conf(tmp_path: Path) -> None:
    conf = tmp_path / "qemu.conf"
    conf.write_text('#user = "root"\nuser = "+64999"  # a number\ngroup = "+65000"\n')
    assert qemu_user(str(conf)) == QemuUser("", 64999, 65000, ())
    conf.write_text('user = "root"\n')
    assert qemu_user(str(conf)) is None  # QEMU runs as root: nothing to open
    conf.write_text('user = "no-such-user-here"\n')
    with pytest.raises(OperationError, match="no user or group 'no-such-user-here'"):
        qemu_user(str(conf))
