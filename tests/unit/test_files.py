"""Browsing and extracting a group's or a backup's files (ops/files.py) on the fakes:
the fake appliance reads each disk's chain, so every group and every backup shows its
own point in time; nothing is written anywhere but under --to."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapgroup.domain.errors import (
    Busy,
    FilesystemError,
    InvalidArgument,
    NotFound,
    OperationError,
)
from snapgroup.ops.guest_sources import FilesSource
from snapgroup.testing.fakes import lab_domain
from snapgroup.testing.guest_fakes import BASE_MTIME, FakeGuestFiles
from tests.unit.conftest import Lab
from tests.unit.test_cli import cli

VM = "a" * 32


@pytest.fixture
def guest(lab: Lab, tmp_path: Path) -> Iterator[FakeGuestFiles]:
    fake = FakeGuestFiles(lab.images.read)
    lab.engine.guest_files = fake
    lab_domain(lab.hv, directory=str(tmp_path / "vm"))
    (tmp_path / "vm").mkdir()
    vdb = lab.hv.disk_path(VM, "vdb")
    vdc = lab.hv.disk_path(VM, "vdc")
    assert vdb is not None and vdc is not None
    lab.images.write(vdb, 0, "fs:ext4")
    lab.images.write(vdc, 0, "parts:vfat,ext4")
    yield fake
    fake.close()


def _write(lab: Lab, target: str, cluster: int, value: str) -> None:
    path = lab.hv.disk_path(VM, target)
    assert path is not None
    lab.images.write(path, cluster, value)


def test_each_group_shows_its_own_point_in_time(lab: Lab, guest: FakeGuestFiles) -> None:
    _write(lab, "vdb", 1, "file:/etc/app.conf=v1")
    g1 = lab.engine.create(vm="vm1", name="g1")
    _write(lab, "vdb", 1, "file:/etc/app.conf=v2")
    _write(lab, "vdb", 2, "file:/etc/new=n")
    g2 = lab.engine.create(vm="vm1", name="g2")

    listing = lab.engine.files(FilesSource(group=g1.uuid))
    names = {f.name: f.fstype for f in listing.filesystems}
    assert names == {"vda": "", "vdb": "ext4", "vdc": "", "vdc1": "vfat", "vdc2": "ext4"}
    assert listing.to_dict()["source"] == {"groupUuid": g1.uuid, "vmInstanceUuid": VM}

    old = lab.engine.files(FilesSource(group=g1.uuid), fs="vdb", path="/etc")
    new = lab.engine.files(FilesSource(group=g2.uuid), disk="vdb", path="/etc")
    assert [e.name for e in old.entries] == ["app.conf"]
    assert [e.name for e in new.entries] == ["app.conf", "new"]
    entry = old.to_dict()["entries"][0]
    assert entry["type"] == "file" and entry["size"] == 2 and entry["mode"] == "0644"
    assert entry["mtimeNs"] == (BASE_MTIME + 1) * 10**9
    assert guest.launches == 3  # one appliance per call
    assert all(s.closed for s in guest.sessions)


def test_extract_copies_files_and_trees_with_their_mtimes(
    lab: Lab, guest: FakeGuestFiles, tmp_path: Path
) -> None:
    _write(lab, "vdb", 3, "file:/srv/data/a.txt=alpha")
    _write(lab, "vdb", 4, "file:/srv/data/sub/b.txt=beta")
    _write(lab, "vdb", 5, "link:/srv/data/sub/current=b.txt")
    _write(lab, "vdb", 6, "link:/srv/data/escape=/etc/passwd")
    _write(lab, "vdb", 7, "file:/srv/one=single")
    group = lab.engine.create(vm="vm1", name="g")
    out = tmp_path / "out"
    out.mkdir()
    done = lab.engine.extract(
        FilesSource(group=group.uuid), ["/srv/data", "/srv/one"], to=str(out), disk="vdb"
    )
    assert (out / "data" / "a.txt").read_text() == "alpha"
    assert (out / "data" / "sub" / "b.txt").read_text() == "beta"
    assert (out / "data" / "sub" / "b.txt").stat().st_mtime == BASE_MTIME + 4
    assert os.readlink(out / "data" / "sub" / "current") == "b.txt"
    assert not (out / "data" / "escape").exists()  # an absolute link: skipped, reported
    assert [m for m, _ in done[0].skipped] == ["./escape"]
    assert (out / "one").read_text() == "single"
    assert (out / "one").stat().st_mtime == BASE_MTIME + 7
    assert stat.S_IMODE((out / "one").stat().st_mode) == 0o644
    assert [(d.type, d.files) for d in done] == [("directory", 2), ("file", 1)]
    # Again: nothing is overwritten, and the refusal comes before any appliance work.
    with pytest.raises(OperationError, match="already exists"):
        lab.engine.extract(FilesSource(group=group.uuid), ["/srv/one"], to=str(out))
    assert (out / "one").read_text() == "single"
    assert guest.launches == 1


def test_a_backups_incremental_chain_is_read_in_place(
    lab: Lab, guest: FakeGuestFiles, tmp_path: Path
) -> None:
    repo = str(tmp_path / "repo")
    _write(lab, "vdb", 1, "file:/f=one")
    full = lab.engine.export(lab.engine.create(vm="vm1", name="g1").uuid, to=repo)
    _write(lab, "vdb", 1, "file:/f=two")
    inc = lab.engine.export(lab.engine.create(vm="vm1", name="g2").uuid, to=repo)
    assert not inc.manifest.full
    before = sorted(p.name for p in Path(repo).rglob("*"))
    for backup, text in ((full, "one"), (inc, "two")):
        source = FilesSource(backup=backup.manifest.backup_id, at=repo)
        out = tmp_path / f"out-{text}"
        out.mkdir()
        lab.engine.extract(source, ["/f"], to=str(out), disk="vdb")
        assert (out / "f").read_text() == text
    assert sorted(p.name for p in Path(repo).rglob("*")) == before  # nothing restored


def test_bad_requests_are_clear_and_change_nothing(
    lab: Lab, guest: FakeGuestFiles, tmp_path: Path
) -> None:
    _write(lab, "vdb", 1, "file:/f=x")
    _write(lab, "vda", 0, "fs:ext4:damaged")
    group = FilesSource(group=lab.engine.create(vm="vm1", name="g").uuid)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(FilesystemError) as damaged:
        lab.engine.files(group, disk="vda", path="/")
    assert damaged.value.code == "FILES.1000"
    with pytest.raises(FilesystemError):  # no filesystem at all on the whole disk
        lab.engine.files(group, fs="vdc", path="/")
    with pytest.raises(InvalidArgument, match="several filesystems"):
        lab.engine.files(group, path="/")
    with pytest.raises(NotFound):
        lab.engine.files(group, disk="vdb", path="/missing")
    with pytest.raises(NotFound, match="no disk vdz"):
        lab.engine.files(group, disk="vdz")
    with pytest.raises(InvalidArgument, match="absolute"):
        lab.engine.extract(group, ["etc"], to=str(out), disk="vdb")
    with pytest.raises(NotFound):
        lab.engine.files(FilesSource(group="b" * 32))
    with pytest.raises(InvalidArgument):
        FilesSource(backup="c" * 32)
    assert list(out.iterdir()) == []


def test_a_group_is_read_under_its_vms_lock(lab: Lab, guest: FakeGuestFiles) -> None:
    _write(lab, "vdb", 1, "file:/f=x")
    group = FilesSource(group=lab.engine.create(vm="vm1", name="g").uuid)
    with lab.engine.ctx.locks.vm(VM), pytest.raises(Busy):
        lab.engine.files(group, disk="vdb", path="/")


def test_a_download_holds_the_appliance_until_read(lab: Lab, guest: FakeGuestFiles) -> None:
    _write(lab, "vdb", 1, "file:/big=" + "z" * 23)
    group = FilesSource(group=lab.engine.create(vm="vm1", name="g").uuid)
    got = lab.engine.download(group, "/big", disk="vdb")
    assert (got.name, got.type, got.size) == ("big", "file", 23)
    assert not guest.sessions[-1].closed
    assert b"".join(got.chunks) == b"z" * 23
    assert guest.sessions[-1].closed


def test_mount_and_umount(lab: Lab, guest: FakeGuestFiles, tmp_path: Path) -> None:
    _write(lab, "vdc", 1, "file@2:/x=y")
    group = FilesSource(group=lab.engine.create(vm="vm1", name="g").uuid)
    point = tmp_path / "mnt"
    point.mkdir()
    mounted = lab.engine.mount(group, str(point), fs="vdc2")
    assert guest.mounts[str(point)][1] == "/dev/sdc2"
    assert guest.launches == 1  # a named filesystem needs no listing first
    assert mounted.to_dict()["filesystem"] == "vdc2"
    lab.engine.umount(str(point))
    assert guest.mounts == {}
    lab.engine.mount(group, str(point), disk="vdb")  # the only one there: listed first
    assert guest.mounts[str(point)][1] == "/dev/sdb" and guest.launches == 3


def test_the_cli_lists_extracts_and_refuses_clearly(
    lab: Lab, guest: FakeGuestFiles, tmp_path: Path
) -> None:
    _write(lab, "vdb", 1, "file:/etc/hosts=127.0.0.1")
    group = lab.engine.create(vm="vm1", name="g").uuid
    code, out, _ = cli(lab, "files", group, "--disk", "vdb", "/etc")
    assert code == 0
    assert out.splitlines() == [
        "MODE        SIZE  MTIME                        NAME",
        "-rw-r--r--  9     2023-11-14T22:13:21.000000Z  hosts",
    ]
    code, out, _ = cli(lab, "--json", "files", group, "--disk", "vdc")
    assert code == 0
    assert [f["name"] for f in json.loads(out)["filesystems"]] == ["vdc", "vdc1", "vdc2"]
    target = tmp_path / "got"
    target.mkdir()
    code, out, _ = cli(lab, "extract", group, "/etc/hosts", "--disk", "vdb", "--to", str(target))
    assert code == 0 and (target / "hosts").read_text() == "127.0.0.1"
    code, out, _ = cli(lab, "--json", "files", group, "--fs", "vdc", "/")
    assert code == 1
    assert json.loads(out)["error"]["code"] == "FILES.1000"
    code, out, err = cli(lab, "files", "--backup", "a" * 32)
    assert code == 1 and "--at DIR" in err
