"""ops/restore's targets, on the real qemu-img and a real repository (the hypervisor a
fake): --to-dir makes a directory that is not there yet (0700, its parents as mkdir -p
makes them) and still refuses a path that is not a directory; a thin restore as a VM
(and only that) opens its chain to QEMU's user, and when that fails nothing is left."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from snapgroup.adapters.backup_repo import BackupRepo
from snapgroup.adapters.qemu_img import QemuImg
from snapgroup.domain.errors import InvalidArgument, NotFound, OperationError
from snapgroup.ops import restore
from snapgroup.ops.context import OpContext
from snapgroup.ops.exporting import SourceGroup, export_group
from snapgroup.store.db import Database
from snapgroup.testing.fakes import FakeHypervisor, FakeImageTool
from tests.adapters.test_ops_export import VM, VOLS, Lab, gid
from tests.adapters.test_qemu_img import same_view
from tests.adapters.tools import require_qemu_tools

require_qemu_tools()

DOMAIN = (
    "<domain type='kvm'><name>vm</name><uuid>aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa</uuid>"
    "<devices>"
    + "".join(
        f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source file='/gone/{vol}.qcow2'/><target dev='vd{'ab'[i]}'/></disk>"
        for i, vol in enumerate(VOLS)
    )
    + "</devices></domain>"
)


class DomainLab(Lab):
    def group(self, group_uuid: str) -> SourceGroup:
        return replace(super().group(group_uuid), domain_xml=DOMAIN)


@dataclass
class Grants:
    """What QEMU's user was to be given, and whether to refuse it."""

    asked: list[list[str]] = field(default_factory=list)
    refuse: bool = False


class SpyRepo(BackupRepo):
    def __init__(self, root: str, grants: Grants) -> None:
        super().__init__(root)
        self.grants = grants

    def open_to_qemu(self, files: Sequence[str]) -> None:
        self.grants.asked.append(list(files))
        if self.grants.refuse:
            raise OperationError("QEMU's user cannot read it (as the test wants)")


@pytest.fixture
def grants() -> Grants:
    return Grants()


@pytest.fixture
def ctx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, grants: Grants) -> Iterator[OpContext]:
    monkeypatch.setenv("SNAPGROUP_LOCK_DIR", str(tmp_path / "locks"))
    db = Database(f"sqlite:///{tmp_path / 'sg.db'}")
    yield OpContext.make(
        hypervisor=FakeHypervisor(FakeImageTool()),
        images=QemuImg(),
        db=db,
        backup_store=lambda root: SpyRepo(root, grants),
        host="h1",
    )
    db.dispose()


@pytest.fixture
def chain(tmp_path: Path, grants: Grants) -> tuple[DomainLab, SpyRepo, list[str]]:
    """Backups of groups 1 (full) and 2 (an increment on 1); their ids."""
    (tmp_path / "local").mkdir()
    lab = DomainLab(tmp_path / "local")
    repo = SpyRepo(str(tmp_path / "repo"), grants)
    lab.take(1, None, 0x10)
    lab.take(2, 1, 0x20)
    return lab, repo, [export_group(lab, repo, gid(n)).manifest.backup_id for n in (1, 2)]


def test_to_dir_makes_a_directory_that_is_not_there(
    tmp_path: Path, ctx: OpContext, chain: tuple[DomainLab, SpyRepo, list[str]]
) -> None:
    lab, repo, (_, b2) = chain
    out = tmp_path / "new" / "images"
    done = restore.restore(ctx, b2, source=repo.root, to_dir=str(out))
    assert out.stat().st_mode & 0o777 == 0o700
    for i, vol in enumerate(VOLS):
        assert same_view(Path(done.files[f"vd{'ab'[i]}"]), Path(lab.files[gid(2)][vol]))


@pytest.mark.parametrize("where", ["a-file", "a-file/below", "dangling-link"])
def test_to_dir_refuses_what_is_not_a_directory(
    tmp_path: Path, ctx: OpContext, chain: tuple[DomainLab, SpyRepo, list[str]], where: str
) -> None:
    _, repo, (_, b2) = chain
    (tmp_path / "a-file").write_text("kept\n")
    (tmp_path / "dangling-link").symlink_to(tmp_path / "nowhere")
    with pytest.raises(InvalidArgument, match=r"(is not a directory|Not a directory)"):
        restore.restore(ctx, b2, source=repo.root, to_dir=str(tmp_path / where))
    assert (tmp_path / "a-file").read_text() == "kept\n"
    assert not (tmp_path / "nowhere").exists()


def test_nothing_is_made_for_a_backup_that_is_not_there(
    tmp_path: Path, ctx: OpContext, chain: tuple[DomainLab, SpyRepo, list[str]]
) -> None:
    _, repo, _ = chain
    with pytest.raises(NotFound):
        restore.restore(ctx, "f" * 32, source=repo.root, to_dir=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_only_a_thin_restore_as_a_vm_opens_its_chain_to_qemu(
    tmp_path: Path,
    ctx: OpContext,
    grants: Grants,
    chain: tuple[DomainLab, SpyRepo, list[str]],
) -> None:
    _, repo, (b1, b2) = chain
    disks = tmp_path / "disks"
    disks.mkdir()
    restore.restore(ctx, b2, source=repo.root, as_vm="plain", disk_dir=str(disks))
    restore.restore(ctx, b2, source=repo.root, to_dir=str(tmp_path / "t"), keep_chain=True)
    assert grants.asked == []
    restore.restore(
        ctx, b2, source=repo.root, as_vm="thin", disk_dir=str(disks), keep_chain=True, start=True
    )
    expected = {repo.member_file(VM, b, vol) for b in (b1, b2) for vol in VOLS}
    assert [set(files) for files in grants.asked] == [expected]
    assert ctx.hv.lookup("thin").state.is_live


def test_a_chain_qemu_cannot_read_leaves_no_vm_and_no_file(
    tmp_path: Path,
    ctx: OpContext,
    grants: Grants,
    chain: tuple[DomainLab, SpyRepo, list[str]],
) -> None:
    _, repo, (_, b2) = chain
    disks = tmp_path / "disks"
    disks.mkdir()
    grants.refuse = True
    with pytest.raises(OperationError, match="QEMU's user cannot read it"):
        restore.restore(
            ctx, b2, source=repo.root, as_vm="thin", disk_dir=str(disks), keep_chain=True
        )
    assert grants.asked and os.listdir(disks) == []
    with pytest.raises(NotFound):
        ctx.hv.lookup("thin")
    assert repo.holds(repo.get(b2)) == {}  # no prune is held back by it


def test_an_instant_restores_check_reads_headers_not_data(
    tmp_path: Path, ctx: OpContext, chain: tuple[DomainLab, SpyRepo, list[str]]
) -> None:
    """check_data=False (instant recovery, before its start): a byte flipped in a
    base's data passes (its checksum is the copy's to read), a header naming another
    backing file is refused with nothing made; the full check refuses both."""
    lab, repo, (b1, b2) = chain
    base = Path(repo.member_file(VM, b1, VOLS[0]))
    data = bytearray(base.read_bytes())
    data[-1] ^= 0xFF  # the last cluster: data, not metadata
    base.write_bytes(bytes(data))
    out = tmp_path / "thin"
    done = restore.restore(
        ctx, b2, source=repo.root, to_dir=str(out), keep_chain=True, check_data=False
    )
    assert sorted(done.files) == ["vda", "vdb"]
    with pytest.raises(OperationError, match="sha256 mismatch"):
        restore.restore(ctx, b2, source=repo.root, to_dir=str(tmp_path / "t2"), keep_chain=True)
    top = repo.member_file(VM, b2, VOLS[1])
    other = tmp_path / "other.qcow2"
    QemuImg().create_overlay(str(other), backing=lab.files[gid(1)][VOLS[1]], backing_format="qcow2")
    size = os.path.getsize(top)
    QemuImg().rebase(top, backing=str(other), backing_format="qcow2", unsafe=True)
    assert os.path.getsize(top) == size  # the size check alone would not see it
    out = tmp_path / "refused"
    with pytest.raises(OperationError, match="its headers chain"):
        restore.restore(
            ctx, b2, source=repo.root, to_dir=str(out), keep_chain=True, check_data=False
        )
    assert os.listdir(out) == []
