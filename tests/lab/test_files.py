"""Files of groups and backups on the real stack: libvirt + QEMU, qemu-img, and the
libguestfs appliance `make appliance` builds.

One lab VM with three data disks: vdb ext4 on the whole disk; vdc a GPT disk with an
XFS partition and an LVM volume (vfat); vdd ext4, its superblock damaged before the
third point. The files are written by guestfish while the VM is stopped (three points
in time, each one group, each exported: the first full, the next two incremental),
then the VM runs (firmware only) and every group and every backup is read back: every
file's bytes, mtime (to the nanosecond) and mode are what was written at that point,
while the VM stays running and none of its files changes. Appliance launches are few
(each costs ~9 s of CPU under TCG): three writers, then about one per test.
"""

from __future__ import annotations

import decimal
import hashlib
import io
import os
import signal
import stat
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from snapgroup.adapters.guest_files import appliance_env
from snapgroup.api import Engine, open_engine
from snapgroup.domain.errors import FilesystemError, OperationError
from snapgroup.ops.guest_sources import FilesSource
from snapgroup.rest import create_app
from snapgroup.rest.auth import Accounts, sha512_hex
from snapgroup.testing.labvm import LabVm, create_lab_vm, lab_directory

# One worker runs them all (make test: --dist loadgroup): one world, few appliances.
pytestmark = [pytest.mark.lab, pytest.mark.xdist_group("guest-files")]

URI = "qemu:///system"
DISK_MIB = 512
MIB = 1 << 20


@dataclass
class Point:
    """What one point in time holds: fs name -> path -> (bytes, mtime_ns, mode)."""

    files: dict[str, dict[str, tuple[bytes, int, int]]] = field(default_factory=dict)
    group: str = ""
    backup: str = ""


@dataclass
class World:
    vm: LabVm
    engine: Engine
    repo: str
    points: list[Point]
    scratch: Path
    before: tuple[str, dict[str, str]] = ("", {})


def _virsh(*args: str) -> str:
    return subprocess.run(
        ["virsh", "-c", URI, *args], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()


def _tops(vm: LabVm) -> list[str]:
    """The data disks' current top files (vdb, vdc, vdd)."""
    rows = _virsh("domblklist", vm.name, "--details").splitlines()[2:]
    by_target = {r.split()[2]: r.split()[3] for r in rows if len(r.split()) >= 4}
    return [by_target[t] for t in ("vdb", "vdc", "vdd")]


def _guestfish(disks: list[str], script: str) -> None:
    argv = ["guestfish", "--format=qcow2"]
    for disk in disks:
        argv += ["-a", disk]
    proc = subprocess.run(
        argv,
        input="run\n" + script,
        capture_output=True,
        text=True,
        env={**os.environ, **appliance_env()},
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def _files_script(point: Point, scratch: Path, tag: str) -> str:
    """guestfish lines writing `point`'s files: uploads, then each file's mode and mtime
    (directories' last, children first)."""
    devices = {"vdb": "/dev/sda", "vdc1": "/dev/sdb1", "sgvg/data": "/dev/sgvg/data"}
    lines = []
    for fs, files in point.files.items():
        lines.append(f"mount {devices[fs]} /")
        for n, (path, (data, mtime_ns, mode)) in enumerate(sorted(files.items())):
            local = scratch / f"{tag}-{fs.replace('/', '_')}-{n}"
            local.write_bytes(data)
            lines += [f"mkdir-p {os.path.dirname(path)}", f"upload {local} {path}"]
            if fs != "sgvg/data":  # vfat has no modes
                lines.append(f"chmod 0{mode:o} {path}")
            secs, nsecs = divmod(mtime_ns, 10**9)
            lines.append(f"utimens {path} 0 0 {secs} {nsecs}")
        lines.append("umount-all")
    return "\n".join(lines) + "\n"


def _expected(previous: Point | None, changes: dict[str, dict[str, bytes | None]], n: int) -> Point:
    """The next point: the previous files, changed (None: removed), each changed file a
    new mtime with nanoseconds (vfat keeps 2 s, so whole even seconds there)."""
    point = Point({fs: dict(files) for fs, files in (previous.files if previous else {}).items()})
    for fs, files in changes.items():
        tree = point.files.setdefault(fs, {})
        for i, (path, data) in enumerate(sorted(files.items())):
            if data is None:
                tree.pop(path, None)
                continue
            base = 1_700_000_000 + n * 10_000 + i * 10
            mtime = base * 10**9 if fs == "sgvg/data" else base * 10**9 + 123_456_789 + i
            mode = 0o755 if fs == "sgvg/data" else (0o640 if i % 2 else 0o600)
            tree[path] = (data, mtime, mode)
    return point


def _chain_digests(vm: LabVm) -> dict[str, str]:
    """sha256 of every file in the VM's disks' chains (its tops and the snapshots)."""
    out = {}
    rows = _virsh("domblklist", vm.name).splitlines()[2:]
    for top in [r.split()[1] for r in rows if len(r.split()) == 2]:
        chain = subprocess.run(
            ["qemu-img", "info", "-U", "--backing-chain", top],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for line in chain.splitlines():
            if line.startswith("image: "):
                path = line.removeprefix("image: ")
                out[path] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    appliance_env()  # a missing appliance fails here, clearly
    home = tmp_path_factory.mktemp("files")
    scratch = home / "scratch"
    scratch.mkdir()
    name = f"sg-lab-files-{uuid.uuid4().hex[:8]}"
    vm = create_lab_vm(lab_directory(name), name=name, start=False, data_disks=3, disk_mib=DISK_MIB)
    engine = open_engine(connect=URI, db=f"sqlite:///{home / 'snapgroup.db'}")
    repo = str(home / "repo")
    try:
        blob = os.urandom(3 * MIB + 17)
        p1 = _expected(
            None,
            {
                "vdb": {
                    "/etc/app/config.yml": b"level: 1\n",
                    "/data/blob.bin": blob,
                    "/notes.txt": b"first\n",
                    "/srv/tree/a/b/deep.txt": b"deep\n",
                },
                "vdc1": {"/xfs/one.txt": b"xfs one\n"},
                "sgvg/data": {"/LV.TXT": b"on lvm\n"},
            },
            1,
        )
        setup = (
            "mkfs ext4 /dev/sda\n"
            "part-init /dev/sdb gpt\npart-add /dev/sdb p 2048 720895\n"
            "part-add /dev/sdb p 720896 -2048\nmkfs xfs /dev/sdb1\n"
            "pvcreate /dev/sdb2\nvgcreate sgvg /dev/sdb2\nlvcreate data sgvg 64\n"
            "mkfs vfat /dev/sgvg/data\n"
            "mkfs ext4 /dev/sdc\nmount /dev/sdc /\nwrite /x.txt soon-damaged\numount-all\n"
            # links: one inside the tree, one to the host's /etc (never followed out)
            "mount /dev/sda /\nmkdir-p /etc/app\nln-s config.yml /etc/app/current\n"
            "mkdir-p /srv/tree\nln-s /etc/passwd /srv/tree/escape\numount-all\n"
        )
        _guestfish(_tops(vm), setup + _files_script(p1, scratch, "p1"))
        p2 = _expected(
            p1,
            {
                "vdb": {
                    "/etc/app/config.yml": b"level: 2\n",
                    "/notes.txt": None,
                    "/data/new.bin": os.urandom(MIB),
                },
                "vdc1": {"/xfs/two.txt": b"xfs two\n"},
            },
            2,
        )
        p3 = _expected(p2, {"vdb": {"/etc/app/config.yml": b"level: 3\n"}}, 3)
        points = [p1, p2, p3]
        for n, point in enumerate(points, start=1):
            if n > 1:
                script = _files_script(
                    Point(
                        {
                            fs: {
                                p: f
                                for p, f in files.items()
                                if points[n - 2].files.get(fs, {}).get(p) != f
                            }
                            for fs, files in point.files.items()
                        }
                    ),
                    scratch,
                    f"p{n}",
                )
                removed = [p for p in points[n - 2].files["vdb"] if p not in point.files["vdb"]]
                script = (
                    "mount /dev/sda /\n"
                    + "".join(f"rm {p}\n" for p in removed)
                    + "umount-all\n"
                    + script
                )
                _guestfish(_tops(vm), script)
            if n == 3:  # vdd's superblock: counts overwritten, the magic left
                subprocess.run(
                    ["qemu-io", "-f", "qcow2", "-c", "write -P 0xff 1024 56", _tops(vm)[2]],
                    check=True,
                    capture_output=True,
                )
            point.group = engine.create(vm=name, name=f"p{n}").uuid
            result = engine.export(point.group, to=repo)
            assert result.manifest.full == (n == 1)
            point.backup = result.manifest.backup_id
        vm.start()
        world = World(vm, engine, repo, points, scratch)
        world.before = (_virsh("domstate", name), _chain_digests(vm))
        yield world
    finally:
        vm.destroy()
        engine.db.dispose()


def _vm_untouched(world: World) -> None:
    assert _virsh("domstate", world.vm.name) == "running"
    assert world.before[0] == "running"
    assert _chain_digests(world.vm) == world.before[1]


def _tree(root: Path) -> dict[str, tuple[bytes, int, int]]:
    out = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            st = path.stat()
            out["/" + str(path.relative_to(root))] = (
                path.read_bytes(),
                st.st_mtime_ns,
                stat.S_IMODE(st.st_mode),
            )
    return out


def _sources(point: Point, repo: str) -> list[tuple[str, FilesSource]]:
    return [
        ("group", FilesSource(group=point.group)),
        ("backup", FilesSource(backup=point.backup, at=repo)),
    ]


def test_every_group_and_backup_gives_back_its_point_in_time(world: World, tmp_path: Path) -> None:
    """vdb from all six: the whole tree plus one file by itself, byte for byte, mtime to
    the nanosecond, mode; the link inside kept, the link to /etc skipped."""
    for n, point in enumerate(world.points, start=1):
        for kind, source in _sources(point, world.repo):
            out = tmp_path / f"{kind}{n}"
            out.mkdir()
            done = world.engine.extract(source, ["/", "/etc/app/config.yml"], to=str(out), fs="vdb")
            got = _tree(out / "vdb")
            assert {p: f for p, f in got.items() if not p.startswith("/lost+found")} == point.files[
                "vdb"
            ], (kind, n)
            single = out / "config.yml"
            assert single.read_bytes() == point.files["vdb"]["/etc/app/config.yml"][0]
            assert single.stat().st_mtime_ns == point.files["vdb"]["/etc/app/config.yml"][1]
            assert os.readlink(out / "vdb" / "etc" / "app" / "current") == "config.yml"
            assert not (out / "vdb" / "srv" / "tree" / "escape").exists()
            assert [m for m, _ in done[0].skipped] == ["./srv/tree/escape"]
    _vm_untouched(world)


def test_listing_and_other_filesystems_of_an_incremental_backup(
    world: World, tmp_path: Path
) -> None:
    p2 = world.points[1]
    source = FilesSource(backup=p2.backup, at=world.repo)
    found = {f.name: f for f in world.engine.files(source).filesystems}
    assert {n: f.fstype for n, f in found.items() if f.fstype} == {
        "vda": "unknown",  # never formatted
        "vdb": "ext4",
        "vdc1": "xfs",
        "vdc2": "LVM2_member",
        "sgvg/data": "vfat",
        "vdd": "ext4",
    }
    assert found["vdc"].kind == "disk" and found["sgvg/data"].kind == "lv"
    for fs in ("vdc1", "sgvg/data"):
        out = tmp_path / fs.replace("/", "-")
        out.mkdir()
        world.engine.extract(source, ["/"], to=str(out), fs=fs)
        got = _tree(out / fs.replace("/", "-"))
        want = p2.files[fs]
        if fs == "sgvg/data":  # vfat: upper-case short names, no modes
            got = {p: (d, m, 0o755) for p, (d, m, _) in got.items()}
        assert got == want, fs
    listing = world.engine.files(source, fs="vdb", path="/etc/app")
    assert [(e.name, e.type, e.target) for e in listing.entries] == [
        ("config.yml", "file", None),
        ("current", "symlink", "config.yml"),
    ]
    _vm_untouched(world)


def test_a_damaged_superblock_is_a_clear_error_and_changes_nothing(world: World) -> None:
    p3 = world.points[2]
    for source in (FilesSource(group=p3.group), FilesSource(backup=p3.backup, at=world.repo)):
        with pytest.raises(FilesystemError) as failed:
            world.engine.files(source, disk="vdd", path="/")
        assert failed.value.code == "FILES.1000"
        assert "superblock" in failed.value.details
    _vm_untouched(world)


def test_mount_a_backup_read_only_until_umount(world: World, tmp_path: Path) -> None:
    p1 = world.points[0]
    point = tmp_path / "mnt"
    point.mkdir()
    world.engine.mount(FilesSource(backup=p1.backup, at=world.repo), str(point), fs="vdb")
    try:
        assert (point / "notes.txt").read_bytes() == p1.files["vdb"]["/notes.txt"][0]
        with pytest.raises(OSError):
            (point / "new.txt").write_text("refused")
    finally:
        world.engine.umount(str(point))
    assert not (point / "notes.txt").exists()
    _vm_untouched(world)


def _serving(point: Path) -> int:
    """The pid of the guestmount serving `point` (its argv names the mountpoint)."""
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"guestmount") and str(point).encode() in argv:
            return int(proc.name)
    raise AssertionError(f"no guestmount serves {point}")


def _running(pid: int) -> bool:
    """Alive (a zombie's descriptors are closed already: not alive)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def test_a_mount_holds_its_group_and_backups_until_umount_or_its_death(
    world: World, tmp_path: Path
) -> None:
    """While mounted (the command returned: the serving guestmount holds the mount's
    lock), the group's delete and the prune of a backup its chain reads are refused;
    umount releases the backups' holds; a mount whose guestmount was killed -9 is
    released by recover. Nothing is deleted or pruned here: the world is shared."""
    p1, p2 = world.points[0], world.points[1]
    backup_point, group_point = tmp_path / "b", tmp_path / "g"
    backup_point.mkdir()
    group_point.mkdir()
    world.engine.mount(FilesSource(backup=p2.backup, at=world.repo), str(backup_point), fs="vdb")
    try:
        held = sorted(p.parent.name for p in Path(world.repo).rglob("hold-*.json"))
        assert held == sorted([p1.backup, p2.backup])  # p2 reads p1
        with pytest.raises(OperationError, match=f"is mounted at {backup_point}") as refused:
            world.engine.prune_backups(at=world.repo, vm=world.vm.name, keep=2)
        assert refused.value.code == "SYS.1006"
    finally:
        world.engine.umount(str(backup_point))
    assert not list(Path(world.repo).rglob("hold-*.json"))
    assert len(world.engine.backups(at=world.repo)) == 3
    world.engine.mount(FilesSource(group=p1.group), str(group_point), fs="vdb")
    try:
        with pytest.raises(OperationError, match=f"is mounted at {group_point}"):
            world.engine.delete(p1.group)
        assert world.engine.delete_plan(p1.group).to_json()["mounted"] == [str(group_point)]
        pid = _serving(group_point)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60  # how long a killed process may take to go
        while _running(pid):
            assert time.monotonic() < deadline, f"guestmount {pid} outlived kill -9"
            time.sleep(0.1)
        world.engine.recover()
        plan = world.engine.delete_plan(p1.group).to_json()
        assert plan["mounted"] == [] and not plan["wouldRefuse"]
    finally:
        world.engine.umount(str(group_point))  # the dead FUSE mount, unmounted all the same
    # A later group mounted: the older group's delete would commit the mounted group's
    # files into its own and move them under the appliance reading them (a dry run only:
    # the world is shared).
    later_point = tmp_path / "later"
    later_point.mkdir()
    world.engine.mount(FilesSource(group=p2.group), str(later_point), fs="vdb")
    try:
        plan = world.engine.delete_plan(p1.group).to_json()
        assert plan["wouldRefuse"], plan
        why = f"the mount of group {p2.group} at {later_point}"
        assert all(why in problem for problem in plan["problems"]), plan["problems"]
    finally:
        world.engine.umount(str(later_point))
    assert not world.engine.delete_plan(p1.group).to_json()["wouldRefuse"]
    _vm_untouched(world)


def test_rest_lists_and_downloads_an_incremental_backups_tree(world: World) -> None:
    """The served repository's newest (incremental) backup over HTTP, on the real engine:
    /etc/app as a tar stream, byte for byte, mtimes to the nanosecond (pax)."""
    Accounts(world.engine.db, cost=1 << 8).set_password("admin", "pw")
    app = create_app(lambda: world.engine, backup_repositories={"main": world.repo})
    p3 = world.points[2]
    with TestClient(app) as client:
        body = {"logInByAccount": {"accountName": "admin", "password": sha512_hex("pw")}}
        session = client.put("/zstack/v1/accounts/login", json=body).json()["inventory"]["uuid"]
        got = client.get(
            f"/zstack/v1/snapgroup/backup-repositories/main/backups/{p3.backup}/files/content",
            params={"fs": "vdb", "path": "/etc/app"},
            headers={"Authorization": f"OAuth {session}"},
        )
    assert got.status_code == 200, got.text
    assert got.headers["content-type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(got.content)) as archive:
        conf = archive.getmember("./config.yml")
        data = archive.extractfile(conf)
        assert data is not None
        want, mtime_ns, mode = p3.files["vdb"]["/etc/app/config.yml"]
        assert data.read() == want and stat.S_IMODE(conf.mode) == mode
        assert decimal.Decimal(conf.pax_headers["mtime"]).scaleb(9) == mtime_ns
        assert archive.getmember("./current").linkname == "config.yml"
    _vm_untouched(world)
