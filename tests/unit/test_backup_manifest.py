"""The backup manifest: JSON round trip, validation with stable codes, what a bad file
breaks, and the base an incremental export reads through."""

from __future__ import annotations

import json
from typing import Any

import pytest

from snapgroup.domain.backup_chains import broken_backups, newest_base
from snapgroup.domain.backup_manifest import (
    FORMAT_VERSION,
    BackupManifest,
    DiskBackup,
    backing_name,
)
from snapgroup.domain.errors import InvalidArgument, OperationError
from snapgroup.domain.manifest_rules import check_manifest, parse_manifest

VM = "a" * 32
VDA, VDB = "b" * 32, "c" * 32


def bid(n: int) -> str:
    return f"{n:032x}"


def gid(n: int) -> str:
    return f"{n + 0x100:032x}"


def disk(volume: str, target: str, device_id: int, chain: tuple[str, ...]) -> DiskBackup:
    return DiskBackup(
        device_id=device_id,
        volume_uuid=volume,
        target=target,
        virtual_size=1 << 30,
        base_backup_id=chain[-2] if len(chain) > 1 else None,
        chain=chain,
        sha256="0" * 64,
        bytes_written=4096,
    )


def manifest(n: int, chain: tuple[int, ...] | None = None) -> BackupManifest:
    ids = tuple(bid(i) for i in (chain or (n,)))
    return BackupManifest(
        backup_id=bid(n),
        created=f"2024-01-{n:02d}T00:00:00Z",
        vm_uuid=VM,
        vm_name="web 1",
        group_uuid=gid(n),
        group_name=f"g{n}",
        group_create_date=f"2024-01-{n:02d}T00:00:00Z",
        inventory={"uuid": gid(n), "volumeSnapshotRefs": []},
        domain_xml="<domain type='kvm'><name>web 1</name></domain>",
        disks=(disk(VDA, "vda", 0, ids), disk(VDB, "vdb", 1, ids[-1:])),
        full_reason=None,
    )


def test_round_trip_keeps_every_field() -> None:
    m = manifest(3, (1, 3))
    doc = json.loads(m.to_json())
    assert doc["format"] == "snapgroup-backup" and doc["formatVersion"] == FORMAT_VERSION
    assert doc["disks"][0]["file"] == f"{VDA}.qcow2"
    assert doc["disks"][0]["baseBackupId"] == bid(1)
    assert doc["disks"][1]["baseBackupId"] is None
    assert parse_manifest(m.to_json()) == m
    assert not m.full and manifest(1).full


def test_unknown_top_level_keys_of_a_later_minor_change_survive() -> None:
    doc = json.loads(manifest(1).to_json())
    doc["compression"] = "none"
    again = parse_manifest(json.dumps(doc))
    assert again.extra == {"compression": "none"}
    assert json.loads(again.to_json())["compression"] == "none"


def edited(change: Any) -> str:
    doc = json.loads(manifest(2, (1, 2)).to_json())
    change(doc)
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(format="other"), "not a snapgroup backup manifest"),
        (lambda d: d.update(backupId="../x"), "backupId"),
        (lambda d: d["vm"].pop("uuid"), "missing 'uuid'"),
        (lambda d: d["disks"][0].update(file="../../etc/passwd"), "file must be"),
        (lambda d: d["disks"][0].update(virtualSize=True), "virtualSize must be an integer"),
        (lambda d: d["disks"][0].update(virtualSize=0), "out of range"),
        (lambda d: d["disks"][0].update(sha256="xyz"), "sha256"),
        (lambda d: d["disks"][0].update(chain=[bid(1)]), "chain must end with this backup"),
        (lambda d: d["disks"][0].update(baseBackupId=None), "is not the chain's previous"),
        (lambda d: d["disks"][1].update(target="vda"), "same target"),
        (lambda d: d.update(disks=[]), "no disks"),
        (lambda d: d.update(group="g"), "group must be an object"),
    ],
)
def test_a_bad_manifest_is_an_invalid_argument(change: Any, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message) as err:
        parse_manifest(edited(change), where="m.json")
    assert err.value.code == "SYS.1007"
    assert "m.json" in err.value.details


def test_not_json_is_an_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="not JSON"):
        parse_manifest(b"\xff{")


def test_a_newer_format_is_an_operation_error() -> None:
    text = edited(lambda d: d.update(formatVersion=FORMAT_VERSION + 1))
    with pytest.raises(OperationError, match="upgrade snapgroup") as err:
        parse_manifest(text)
    assert err.value.code == "SYS.1006"


def test_check_refuses_a_manifest_before_it_is_written() -> None:
    m = manifest(1)
    with pytest.raises(InvalidArgument, match="same volumeUuid"):
        check_manifest(m.replace(disks=(m.disks[0], m.disks[1].replace(volume_uuid=VDA))))


def test_increments_name_their_base_relative_to_their_own_directory() -> None:
    assert backing_name(bid(1), VDA) == f"../{bid(1)}/{VDA}.qcow2"


def test_a_bad_file_breaks_its_backup_and_every_later_one_reading_through_it() -> None:
    # 1 full; 2 and 3 increments 1 <- 2 <- 3; 4 full; vdb full in each.
    ms = [manifest(1), manifest(2, (1, 2)), manifest(3, (1, 2, 3)), manifest(4)]
    assert broken_backups(ms, [(bid(2), VDA)]) == {
        bid(2): {(bid(2), VDA)},
        bid(3): {(bid(2), VDA)},
    }
    # vdb of backup 2 is full: only backup 2 reads it.
    assert broken_backups(ms, [(bid(2), VDB)]) == {bid(2): {(bid(2), VDB)}}
    assert broken_backups(ms, []) == {}


def test_the_base_is_the_newest_export_of_an_ancestor() -> None:
    ms = [manifest(1), manifest(2, (1, 2)), manifest(3, (1, 2, 3))]
    # Group 3 is not an ancestor (a revert went back to group 2's branch).
    base = newest_base(ms, [gid(2), gid(1)])
    assert base is not None and base.backup_id == bid(2)
    # Exported again later: the newer export of the same group wins.
    again = manifest(5).replace(group_uuid=gid(1), created="2024-02-01T00:00:00Z")
    base = newest_base([*ms, again], [gid(1)])
    assert base is not None and base.backup_id == bid(5)
    assert newest_base(ms, [gid(9)]) is None
    assert newest_base([], [gid(1)]) is None


def test_the_types_behave_as_the_frozen_dataclasses_they_were() -> None:
    """domain/frozen.py: equal by value, hashable, immutable, copied with changes; copy,
    deepcopy and pickle make them again (a listing imports no dataclasses)."""
    import copy
    import pickle

    m = manifest(2, (1, 2))
    again = parse_manifest(m.to_json())
    assert again == m and again is not m and hash(again.disks) == hash(m.disks)
    assert m != manifest(3) and m != m.backup_id and m.extra == {}
    with pytest.raises(AttributeError, match="cannot assign to field 'created'"):
        m.created = "now"
    with pytest.raises(AttributeError):
        del m.disks[0].sha256
    assert not hasattr(m, "__dict__")
    changed = m.replace(group_name="other")
    assert (changed.group_name, m.group_name, changed.disks) == ("other", "g2", m.disks)
    with pytest.raises(TypeError, match="no field 'colour'"):
        m.replace(colour="red")
    assert DiskBackup(0, VDA, "vda", 1, None, (bid(1),), "0" * 64, 0).sha256_piece == 16 << 20
    for made in (copy.copy(m), copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert made == m
    assert repr(m.disks[1]).startswith("DiskBackup(base_backup_id=None, bytes_written=4096,")
