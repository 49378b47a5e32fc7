"""Backup repository files on the real qemu-img, in tmp_path (no hypervisor).

A "local" chain stands in for a VM's disk: base <- S_A <- X <- S_G <- top, where S_A is
group A's snapshot file and S_G group G's; X is a layer between them (a group taken but
not exported). Guest data is written with qemu-io and every export chain is checked
with `qemu-img compare` against the local file that holds the same point in time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from snapgroup.adapters.backup_repo import BackupRepo, file_problem, file_size, sha256_file
from snapgroup.adapters.qemu_img import PROGRESS_END, QemuImg
from snapgroup.domain.backup_chains import broken_backups
from snapgroup.domain.backup_manifest import (
    BackupManifest,
    DiskBackup,
    backing_name,
)
from snapgroup.domain.errors import ImageToolError, InvalidArgument, NotFound, OperationError
from snapgroup.domain.models import BlockJobProgress
from tests.adapters.test_qemu_img import qcow2, reads, same_view, write
from tests.adapters.tools import require_qemu_tools, sh

require_qemu_tools()

MiB = 1024 * 1024
SIZE = 64 * MiB
VM = "a" * 32
VOL = "b" * 32


def allocated_here(path: Path) -> int:
    """Bytes the file itself maps (data or zero clusters), its backing not counted."""
    spec = {"driver": "qcow2", "file": {"driver": "file", "filename": str(path)}, "backing": None}
    extents = json.loads(sh("qemu-img", "map", "--output=json", "json:" + json.dumps(spec)))
    return sum(e["length"] for e in extents if e["present"])


@pytest.fixture
def local(tmp_path: Path) -> dict[str, Path]:
    """base (32 MiB of 0x11) <- S_A (4 MiB of 0x22) <- X <- S_G <- top."""
    d = tmp_path / "local"
    d.mkdir()
    base = qcow2(d / "base.qcow2", size=SIZE)
    write(base, 0x11, 0, 32 * MiB)
    sa = qcow2(d / "sa.qcow2", backing=base)
    write(sa, 0x22, 4 * MiB, 4 * MiB)
    x = qcow2(d / "x.qcow2", backing=sa)
    write(x, 0x33, 8 * MiB, MiB)
    # A guest's write-zeroes and discard over base data: an increment must keep them,
    # not let the base's 0x11 show through.
    sh("qemu-io", "-f", "qcow2", "-c", f"write -z 0 {MiB}", "-c", f"discard {20 * MiB} {MiB}", x)
    sg = qcow2(d / "sg.qcow2", backing=x)
    write(sg, 0x44, 16 * MiB, MiB)
    top = qcow2(d / "top.qcow2", backing=sg)
    write(top, 0x55, 0, MiB)  # after G: in no export
    return {"base": base, "sa": sa, "x": x, "sg": sg, "top": top}


def backup_id(n: int) -> str:
    return f"{n:032x}"


def export_a_then_g(repo: Path, local: dict[str, Path], *, layers: list[Path]) -> tuple[Path, Path]:
    img = QemuImg()
    a = repo / VM / backup_id(1) / f"{VOL}.qcow2"
    g = repo / VM / backup_id(2) / f"{VOL}.qcow2"
    a.parent.mkdir(parents=True)
    g.parent.mkdir(parents=True)
    img.flatten(str(local["sa"]), str(a), shared=True)
    img.export_incremental(
        [str(p) for p in layers], str(g), base_name=backing_name(backup_id(1), VOL)
    )
    return a, g


def test_full_export_is_standalone_with_the_groups_view(
    tmp_path: Path, local: dict[str, Path]
) -> None:
    out = tmp_path / "full.qcow2"
    QemuImg().flatten(str(local["sg"]), str(out), shared=True)
    info = json.loads(sh("qemu-img", "info", "--output=json", out))
    assert "backing-filename" not in info
    assert info["virtual-size"] == SIZE
    assert same_view(out, local["sg"])
    assert not same_view(out, local["top"])  # what was written after G is not in it


@pytest.mark.parametrize("layered", [False, True], ids=["one-layer", "two-layers"])
def test_incremental_chain_reads_back_the_groups_view(
    tmp_path: Path, local: dict[str, Path], layered: bool
) -> None:
    if layered:
        a, g = export_a_then_g(tmp_path, local, layers=[local["x"], local["sg"]])
        expected = local["sg"]
    else:  # G directly above A: the increment is X alone
        a, g = export_a_then_g(tmp_path, local, layers=[local["x"]])
        expected = local["x"]
    assert same_view(g, expected)
    assert same_view(a, local["sa"])
    info = json.loads(sh("qemu-img", "info", "--output=json", g))
    assert info["backing-filename"] == f"../{backup_id(1)}/{VOL}.qcow2"  # relative, as given
    assert reads(g, 0x00, 0, MiB)  # the write-zeroes did not read through to 0x11
    assert reads(g, 0x00, 20 * MiB, MiB)  # nor the discard
    assert reads(g, 0x22, 4 * MiB, 4 * MiB)  # through the base export
    assert not list(g.parent.glob("*.layer*"))  # the per-layer copies were dropped


def test_the_increment_holds_only_the_changed_clusters(
    tmp_path: Path, local: dict[str, Path]
) -> None:
    a, g = export_a_then_g(tmp_path, local, layers=[local["x"], local["sg"]])
    # Changed since A: 1 MiB zeroed + 1 MiB 0x33 + 1 MiB discarded + 1 MiB 0x44.
    assert allocated_here(g) == 4 * MiB
    # 2 MiB of data plus qcow2 metadata: zero clusters take no data space.
    assert 2 * MiB < file_size(g) < 2 * MiB + 512 * 1024
    assert file_size(a) > 32 * MiB  # the full export carries all the data


def test_a_moved_repository_keeps_its_chains(tmp_path: Path, local: dict[str, Path]) -> None:
    export_a_then_g(tmp_path / "repo", local, layers=[local["x"], local["sg"]])
    moved = tmp_path / "elsewhere" / "mounted"
    moved.parent.mkdir()
    shutil.move(tmp_path / "repo", moved)
    assert same_view(moved / VM / backup_id(2) / f"{VOL}.qcow2", local["sg"])


def test_progress_is_reported_on_one_scale_across_layers(
    tmp_path: Path, local: dict[str, Path]
) -> None:
    seen: list[BlockJobProgress] = []
    g = tmp_path / "g.qcow2"
    shutil.copy(local["sa"], tmp_path / "a.qcow2")
    QemuImg().export_incremental(
        [str(local["x"]), str(local["sg"])], str(g), base_name="a.qcow2", progress=seen.append
    )
    assert seen and all(p.end == PROGRESS_END for p in seen)
    assert seen[-1].cur == PROGRESS_END
    assert [p.cur for p in seen] == sorted(p.cur for p in seen)  # never goes back


def manifest_for(repo: BackupRepo, path: Path, n: int, base: int | None) -> BackupManifest:
    chain = tuple(backup_id(i) for i in range(1, n + 1)) if base else (backup_id(n),)
    return BackupManifest(
        backup_id=backup_id(n),
        created=f"2024-01-0{n}T00:00:00Z",
        vm_uuid=VM,
        vm_name="vm",
        group_uuid=f"{n + 100:032x}",
        group_name=f"g{n}",
        group_create_date=f"2024-01-0{n}T00:00:00Z",
        inventory={"uuid": f"{n + 100:032x}"},
        domain_xml="<domain/>",
        disks=(
            DiskBackup(
                device_id=0,
                volume_uuid=VOL,
                target="vda",
                virtual_size=SIZE,
                base_backup_id=backup_id(base) if base else None,
                chain=chain,
                sha256=sha256_file(str(path)),
                bytes_written=file_size(path),
            ),
        ),
    )


def publish_two(tmp_path: Path, local: dict[str, Path]) -> BackupRepo:
    """A repository with backup 1 (full, A) and backup 2 (increment over it, G)."""
    repo = BackupRepo(str(tmp_path / "repo"))
    img = QemuImg()
    p1 = repo.begin(VM, backup_id(1))
    img.flatten(str(local["sa"]), p1.file(VOL), shared=True)
    repo.publish(p1, manifest_for(repo, Path(p1.file(VOL)), 1, None))
    p2 = repo.begin(VM, backup_id(2))
    # Written in the partial directory: the relative base name resolves there too.
    img.export_incremental(
        [str(local["x"]), str(local["sg"])], p2.file(VOL), base_name=backing_name(backup_id(1), VOL)
    )
    assert not [m.backup_id for m in repo.backups(VM) if m.backup_id == backup_id(2)]
    repo.publish(p2, manifest_for(repo, Path(p2.file(VOL)), 2, 1))
    return repo


def test_a_backup_is_listed_only_once_published(tmp_path: Path, local: dict[str, Path]) -> None:
    repo = publish_two(tmp_path, local)
    assert [m.backup_id for m in repo.backups()] == [backup_id(1), backup_id(2)]
    assert repo.get(backup_id(2)).disks[0].chain == (backup_id(1), backup_id(2))
    assert same_view(Path(repo.file(repo.get(backup_id(2)), VOL)), local["sg"])
    # The manifest holds the domain XML (graphics passwords too): its owner's only.
    manifest = Path(repo.file(repo.get(backup_id(2)), VOL)).parent / "manifest.json"
    assert manifest.stat().st_mode & 0o777 == 0o600
    # An interrupted export: a partial with a file in it is never listed, and goes.
    partial = repo.begin(VM, backup_id(3))
    QemuImg().flatten(str(local["sg"]), partial.file(VOL), shared=True)
    assert [m.backup_id for m in repo.backups(VM)] == [backup_id(1), backup_id(2)]
    assert repo.partials(VM) == [backup_id(3)]
    assert repo.discard_partials(VM) == [backup_id(3)]
    assert not os.path.exists(partial.path)
    with pytest.raises(NotFound):
        repo.get(backup_id(3))


def test_a_flipped_byte_is_found_by_sha256(tmp_path: Path, local: dict[str, Path]) -> None:
    repo = publish_two(tmp_path, local)
    m1 = repo.get(backup_id(1))
    path = repo.file(m1, VOL)
    assert file_problem(path, m1.disks[0].sha256) is None
    extents = json.loads(sh("qemu-img", "map", "--output=json", path))
    offset = next(e["offset"] for e in extents if e["data"] and e["depth"] == 0)
    with open(path, "r+b") as f:  # one byte of guest data (qemu-img check cannot see it)
        f.seek(offset + 12345)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))
    problem = file_problem(path, m1.disks[0].sha256)
    assert problem is not None and problem.startswith("sha256 mismatch")
    assert QemuImg().check(path).clean  # data damage: only the checksum finds it
    # Backup 2 reads through backup 1's file: both are broken.
    assert set(broken_backups(repo.backups(), [(backup_id(1), VOL)])) == {
        backup_id(1),
        backup_id(2),
    }


def test_damaged_metadata_is_found_by_check(tmp_path: Path, local: dict[str, Path]) -> None:
    repo = publish_two(tmp_path, local)
    path = repo.file(repo.get(backup_id(2)), VOL)
    assert QemuImg().check(path).clean
    header = sh("qemu-img", "info", "--output=json", path)
    assert json.loads(header)["format"] == "qcow2"
    with open(path, "r+b") as f:  # the L1 table's offset is at byte 40 of the header
        f.seek(40)
        l1 = int.from_bytes(f.read(8), "big")
        f.seek(l1)
        f.write(b"\xff" * 8)
    result = QemuImg().check(path)
    assert not result.clean and result.corruptions > 0


def test_a_deleted_base_is_found_and_check_of_the_child_still_runs(
    tmp_path: Path, local: dict[str, Path]
) -> None:
    repo = publish_two(tmp_path, local)
    m1, m2 = repo.backups()
    os.remove(repo.file(m1, VOL))
    assert file_problem(repo.file(m1, VOL), m1.disks[0].sha256) == "missing"
    assert file_problem(repo.file(m2, VOL), m2.disks[0].sha256) is None
    assert QemuImg().check(repo.file(m2, VOL)).clean  # checked alone: its base not opened
    assert broken_backups(repo.backups(), [(m1.backup_id, VOL)]) == {
        m1.backup_id: {(m1.backup_id, VOL)},
        m2.backup_id: {(m1.backup_id, VOL)},
    }


def test_prune_steps_keep_the_successor_readable(tmp_path: Path, local: dict[str, Path]) -> None:
    """Merging backup 1 into backup 2: commit 2's clusters into 1's file, rename it over
    2's. Backup 2 reads the group's view before, between and after the steps."""
    repo = publish_two(tmp_path, local)
    m1, m2 = repo.backups()
    img = QemuImg()
    f1, f2 = repo.file(m1, VOL), repo.file(m2, VOL)
    repo.hide_for_prune(m1, {"backup": m1.backup_id, "into": [m2.backup_id]})
    assert [m.backup_id for m in repo.backups()] == [m2.backup_id]
    assert [(m.backup_id, p["into"]) for m, p in repo.pending_prunes(VM)] == [
        (m1.backup_id, [m2.backup_id])
    ]
    img.commit(f2, base=f1)
    assert same_view(Path(f2), local["sg"])  # between the steps
    img.commit(f2, base=f1)  # a re-run after a crash: the same result
    repo.move_file(f1, f2)
    assert same_view(Path(f2), local["sg"])
    assert "backing-filename" not in json.loads(sh("qemu-img", "info", "--output=json", f2))
    repo.rewrite_manifest(
        m2.replace(
            disks=(
                m2.disks[0].replace(
                    base_backup_id=None,
                    chain=(m2.backup_id,),
                    sha256=sha256_file(f2),
                    bytes_written=file_size(Path(f2)),
                ),
            ),
        )
    )
    repo.remove_backup_dir(VM, m1.backup_id)
    assert not repo.pending_prunes(VM)
    (only,) = repo.backups()
    assert only.full and file_problem(f2, only.disks[0].sha256) is None


def test_a_second_child_is_made_standalone_by_a_safe_rebase(
    tmp_path: Path, local: dict[str, Path]
) -> None:
    repo = publish_two(tmp_path, local)
    m1, m2 = repo.backups()
    f2 = repo.file(m2, VOL)
    QemuImg().set_backing(f2, backing_name=None, safe=True)
    os.remove(repo.file(m1, VOL))  # nothing reads it any more
    assert same_view(Path(f2), local["sg"])


def test_set_backing_refuses_a_name_that_does_not_resolve(
    tmp_path: Path, local: dict[str, Path]
) -> None:
    repo = publish_two(tmp_path, local)
    f2 = repo.file(repo.get(backup_id(2)), VOL)
    with pytest.raises(ImageToolError, match="no backing file"):
        QemuImg().set_backing(f2, backing_name="../nope/x.qcow2", safe=False)
    QemuImg().set_backing(f2, backing_name=backing_name(backup_id(1), VOL), safe=False)
    assert same_view(Path(f2), local["sg"])


def test_names_are_uuids_only(tmp_path: Path) -> None:
    repo = BackupRepo(str(tmp_path))
    with pytest.raises(InvalidArgument):
        repo.begin("../../etc", backup_id(1))
    with pytest.raises(InvalidArgument):
        repo.get("x/../y")


@pytest.mark.parametrize("size", [0, 1, 3 * 4096 - 1, 3 * 4096, 3 * 4096 + 7])
def test_the_checksum_is_sha256_over_the_pieces_digests(tmp_path: Path, size: int) -> None:
    """The manifest's rule, recomputed here from its definition: the pieces' digests in
    order (the last piece shorter), hashed; piece size None is the whole file's SHA-256."""
    path = tmp_path / "f"
    data = os.urandom(size)
    path.write_bytes(data)
    piece = 4096
    digests = b"".join(
        hashlib.sha256(data[at : at + piece]).digest() for at in range(0, size, piece)
    )
    assert sha256_file(str(path), piece) == hashlib.sha256(digests).hexdigest()
    assert sha256_file(str(path), None) == hashlib.sha256(data).hexdigest()
    if size:  # a flipped bit in the last piece, and two pieces swapped, are both found
        flipped = bytearray(data)
        flipped[-1] ^= 0x80
        path.write_bytes(bytes(flipped))
        assert file_problem(str(path), hashlib.sha256(digests).hexdigest(), piece)
    if size > piece:
        path.write_bytes(data[piece : 2 * piece] + data[:piece] + data[2 * piece :])
        assert file_problem(str(path), hashlib.sha256(digests).hexdigest(), piece)


def test_a_format_1_manifest_is_verified_by_the_whole_files_sha256(
    tmp_path: Path, local: dict[str, Path]
) -> None:
    """A repository written before pieces (formatVersion 1, no sha256PieceSize) still
    verifies; a rewrite of its manifest (prune) is written as the current format."""
    repo = publish_two(tmp_path, local)
    m1 = repo.get(backup_id(1))
    path = repo.file(m1, VOL)
    doc = json.loads(m1.to_json())
    doc["formatVersion"] = 1
    del doc["disks"][0]["sha256PieceSize"]
    doc["disks"][0]["sha256"] = sha256_file(path, None)
    manifest_path = Path(path).parent / "manifest.json"
    manifest_path.write_text(json.dumps(doc))
    old = repo.get(backup_id(1))
    assert old.format_version == 1 and old.disks[0].sha256_piece is None
    assert repo.file_problem(path, old.disks[0].sha256, old.disks[0].sha256_piece) is None
    assert repo.file_problem(path, old.disks[0].sha256, 64 * MiB) is not None
    repo.rewrite_manifest(old)
    rewritten = json.loads(manifest_path.read_text())
    assert rewritten["formatVersion"] == 2 and "sha256PieceSize" not in rewritten["disks"][0]
    assert repo.get(backup_id(1)).disks[0].sha256_piece is None


def test_seal_returns_the_checksum_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(os.urandom(3 * MiB))
    assert BackupRepo(str(tmp_path)).seal(str(path)) == sha256_file(str(path))
    with pytest.raises(OperationError, match="cannot seal"):
        BackupRepo(str(tmp_path)).seal(str(tmp_path / "gone"))


@pytest.mark.parametrize("layers", [["x"], ["x", "sg"]])
def test_compressed_files_read_the_same_and_take_less_room(
    tmp_path: Path, local: dict[str, Path], layers: list[str]
) -> None:
    """--compress: a full copy and an increment (one layer; two, whose commit writes
    plain clusters and is packed once more) read exactly as the local files and as the
    uncompressed copies, in less room; the increment keeps its relative backing name."""
    img = QemuImg()
    d = tmp_path / "repo"
    (d / "1").mkdir(parents=True)
    (d / "2").mkdir()
    plain_full, packed_full = d / "1" / "plain.qcow2", d / "1" / "packed.qcow2"
    img.flatten(str(local["sa"]), str(plain_full), shared=True)
    img.flatten(str(local["sa"]), str(packed_full), shared=True, compress=True)
    plain_inc, packed_inc = d / "2" / "plain.qcow2", d / "2" / "packed.qcow2"
    paths = [str(local[name]) for name in layers]
    img.export_incremental(paths, str(plain_inc), base_name="../1/plain.qcow2")
    img.export_incremental(paths, str(packed_inc), base_name="../1/packed.qcow2", compress=True)
    assert sorted(p.name for p in (d / "2").iterdir()) == ["packed.qcow2", "plain.qcow2"]
    info = json.loads(sh("qemu-img", "info", "--output=json", str(packed_inc)))
    assert info["backing-filename"] == "../1/packed.qcow2"
    assert info["format-specific"]["data"]["compression-type"] == "zstd"
    for plain, packed in ((plain_full, packed_full), (plain_inc, packed_inc)):
        assert img.check(str(packed)).clean
        assert file_size(packed) < file_size(plain) // 2
    assert same_view(packed_full, local["sa"])
    assert same_view(packed_inc, local[layers[-1]])
    assert same_view(packed_inc, plain_inc)
    assert allocated_here(packed_inc) == allocated_here(plain_inc)  # the same clusters
