"""ops/export on the real qemu-img and a real repository in tmp_path; the engine is a
small ExportSource over local qcow2 chains (no hypervisor, no store)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from snapgroup.adapters.backup_repo import BackupRepo
from snapgroup.adapters.qemu_img import QemuImg
from snapgroup.domain.errors import OperationError
from snapgroup.ops.backing_up import restore_to_dir, verify_backups
from snapgroup.ops.exporting import SourceDisk, SourceGroup, export_group
from tests.adapters.test_qemu_img import qcow2, same_view, write
from tests.adapters.tools import require_qemu_tools

require_qemu_tools()

MiB = 1024 * 1024
SIZE = 32 * MiB
VM = "a" * 32
VOLS = ("b" * 32, "c" * 32)


@dataclass
class Lab:
    """Two disks; group n's snapshot files are <vol>-g<n>.qcow2, each on the previous."""

    root: Path
    images: QemuImg = field(default_factory=QemuImg)
    files: dict[str, dict[str, str]] = field(default_factory=dict)  # group -> vol -> file
    parents: dict[str, str | None] = field(default_factory=dict)
    clock: int = 0
    ids: int = 0

    def take(self, n: int, parent: int | None, pattern: int) -> None:
        files = {}
        for i, vol in enumerate(VOLS):
            path = self.root / f"{vol}-g{n}.qcow2"
            below = self.files[gid(parent)][vol] if parent is not None else None
            qcow2(path, backing=below, size=SIZE)
            write(path, pattern + i, n * MiB, MiB)
            files[vol] = str(path)
        self.files[gid(n)] = files
        self.parents[gid(n)] = gid(parent) if parent is not None else None

    def group(self, group_uuid: str) -> SourceGroup:
        ancestors = []
        cur = self.parents[group_uuid]
        while cur is not None:
            ancestors.append(cur)
            cur = self.parents[cur]
        return SourceGroup(
            vm_uuid=VM,
            vm_name="vm",
            group_uuid=group_uuid,
            group_name="g",
            create_date="2024-01-01T00:00:00Z",
            inventory={"uuid": group_uuid},
            domain_xml="<domain/>",
            disks=tuple(
                SourceDisk(vol, i, f"vd{'ab'[i]}", self.files[group_uuid][vol], SIZE)
                for i, vol in enumerate(VOLS)
            ),
            ancestors=tuple(ancestors),
        )

    def snapshot_files(self, group_uuid: str) -> Mapping[str, str]:
        return self.files.get(group_uuid, {})

    def now(self) -> str:
        self.clock += 1
        return f"2024-01-01T00:00:{self.clock:02d}Z"

    def new_uuid(self) -> str:
        self.ids += 1
        return f"{self.ids:032x}"


def gid(n: int) -> str:
    return f"{n + 0x100:032x}"


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    (tmp_path / "local").mkdir()
    return Lab(tmp_path / "local")


def test_first_export_full_then_increments_that_read_back_each_group(
    tmp_path: Path, lab: Lab
) -> None:
    repo = BackupRepo(str(tmp_path / "repo"))
    lab.take(1, None, 0x10)
    first = export_group(lab, repo, gid(1)).manifest
    assert first.full and first.full_reason == "no export of an ancestor group in the repository"
    lab.take(2, 1, 0x20)
    lab.take(3, 2, 0x30)  # not exported: its layer is part of group 4's increment
    lab.take(4, 3, 0x40)
    inc = export_group(lab, repo, gid(4)).manifest
    assert inc.full_reason is None
    assert [d.chain for d in inc.disks] == [(first.backup_id, inc.backup_id)] * 2
    for vol in VOLS:
        out = Path(repo.file(inc, vol))
        assert same_view(out, Path(lab.files[gid(4)][vol]))
        assert os.path.getsize(out) < 4 * MiB  # 3 MiB changed (groups 2-4), not the disk
    assert verify_backups(lab.images, repo).clean


def test_a_deleted_base_group_falls_back_to_full_and_says_why(tmp_path: Path, lab: Lab) -> None:
    repo = BackupRepo(str(tmp_path / "repo"))
    lab.take(1, None, 0x10)
    export_group(lab, repo, gid(1))
    lab.take(2, 1, 0x20)
    del lab.files[gid(1)]  # group 1 deleted on this host after its export
    m = export_group(lab, repo, gid(2)).manifest
    assert m.full and "no longer exists on this host" in (m.full_reason or "")
    assert same_view(Path(repo.file(m, VOLS[0])), Path(lab.files[gid(2)][VOLS[0]]))


def test_a_revert_branch_finds_the_ancestor_export(tmp_path: Path, lab: Lab) -> None:
    repo = BackupRepo(str(tmp_path / "repo"))
    lab.take(1, None, 0x10)
    b1 = export_group(lab, repo, gid(1)).manifest
    lab.take(2, 1, 0x20)
    export_group(lab, repo, gid(2))
    lab.take(3, 1, 0x30)  # reverted to group 1, then group 3: a sibling of 2
    b3 = export_group(lab, repo, gid(3)).manifest
    assert b3.disks[0].base_backup_id == b1.backup_id
    assert same_view(Path(repo.file(b3, VOLS[1])), Path(lab.files[gid(3)][VOLS[1]]))


def test_damage_is_reported_with_what_it_breaks_and_restore_refuses(
    tmp_path: Path, lab: Lab
) -> None:
    repo = BackupRepo(str(tmp_path / "repo"))
    lab.take(1, None, 0x10)
    b1 = export_group(lab, repo, gid(1)).manifest
    lab.take(2, 1, 0x20)
    b2 = export_group(lab, repo, gid(2)).manifest
    os.remove(repo.file(b1, VOLS[0]))
    report = verify_backups(lab.images, repo)
    assert [(f.backup_id, f.volume_uuid, f.problem) for f in report.findings] == [
        (b1.backup_id, VOLS[0], "missing")
    ]
    assert set(report.broken) == {b1.backup_id, b2.backup_id}
    out = tmp_path / "restore"
    out.mkdir()
    with pytest.raises(OperationError, match="cannot be restored"):
        restore_to_dir(lab.images, repo, b2.backup_id, str(out))
    assert not list(out.iterdir())  # nothing written


def test_restore_flattened_or_as_overlays(tmp_path: Path, lab: Lab) -> None:
    repo = BackupRepo(str(tmp_path / "repo"))
    lab.take(1, None, 0x10)
    export_group(lab, repo, gid(1))
    lab.take(2, 1, 0x20)
    b2 = export_group(lab, repo, gid(2)).manifest
    for keep_chain in (False, True):
        out = tmp_path / f"restore-{keep_chain}"
        out.mkdir()
        written = restore_to_dir(lab.images, repo, b2.backup_id, str(out), keep_chain=keep_chain)
        assert sorted(written) == ["vda", "vdb"]
        for i, vol in enumerate(VOLS):
            path = Path(written[f"vd{'ab'[i]}"])
            assert same_view(path, Path(lab.files[gid(2)][vol]))
            backing = lab.images.chain(str(path))[0].backing
            assert (backing is not None) == keep_chain


def test_a_killed_export_leaves_a_partial_that_the_next_run_removes(
    tmp_path: Path, lab: Lab
) -> None:
    repo = BackupRepo(str(tmp_path / "repo"))
    lab.take(1, None, 0x10)
    stale = repo.begin(VM, "f" * 32)  # what kill -9 mid-export leaves
    Path(stale.file(VOLS[0])).write_bytes(b"half")
    assert repo.backups() == []
    result = export_group(lab, repo, gid(1))
    assert result.discarded_partials == ("f" * 32,)
    assert [m.backup_id for m in repo.backups()] == [result.manifest.backup_id]
    assert repo.partials(VM) == []
