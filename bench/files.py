"""Files and instant recovery (issue 22).

* time to the first directory listing of a group's disk, and of an incremental backup
  (its chain read in place), vs bare `guestfish --ro` listing the same directory of the
  same files (target <= 1.2x): both start one appliance;
* extract of a 256 MiB file vs `guestfish --ro ... download` of it (bytes to a host
  file, fsynced on neither side);
* instant recovery's time to a running VM (`restore --instant`, Python API) vs a
  flattened `restore --as --start` of the same backup of a 4 GiB disk: a 4 GiB backup
  (the disk written whole) read cold, as a restore after a loss reads its repository
  (the page cache dropped untimed before each side's call; target <= 0.1x), the same
  read warm (the repository in the page cache), and a 4 GiB disk with 1 GiB written,
  warm (the flattened restore copies a quarter as much). Each side's VM and files are removed
  untimed. Its own bench (`--only instant`): it needs no appliance.

The guest disk is written by guestfish once (ext4, the 256 MiB file, a small tree).
"""

from __future__ import annotations

import os
import shutil
import subprocess

from bench import lab
from bench.timing import Row, Stats, Target, compare, rounds, timed
from snapgroup.adapters.guest_files import appliance_env
from snapgroup.ops.guest_sources import FilesSource

NAME = "files"
INSTANT = "instant"
BIG_MIB = 256


def _guestfish(disks: list[str], script: str, *, ro: bool) -> None:
    argv = ["guestfish", "--format=qcow2", *(["--ro"] if ro else [])]
    for disk in disks:
        argv += ["-a", disk]
    done = subprocess.run(  # noqa: S603
        argv,
        input="run\n" + script,
        capture_output=True,
        text=True,
        env={**os.environ, **appliance_env()},
        check=False,
    )
    if done.returncode != 0:
        raise lab.BenchError(f"guestfish: {done.stderr.strip()}")


def _files_rows(runs: int, quick: bool) -> list[Row]:
    rows: list[Row] = []
    big = BIG_MIB // 4 if quick else BIG_MIB
    with lab.engine(NAME) as eng, lab.lab_vm(NAME, disks=2, disk_mib=1024, start=False) as vm:
        work = vm.directory / "bench"
        work.mkdir()
        blob = work / "big.bin"
        blob.write_bytes(os.urandom(big << 20))
        tops = lab.domblklist(vm.name)
        _guestfish(
            [tops["vda"], tops["vdb"]],
            f"mkfs ext4 /dev/sdb\nmount /dev/sdb /\nupload {blob} /big.bin\n"
            "mkdir-p /etc/app\nwrite /etc/app/conf a=1\n",
            ro=False,
        )
        blob.unlink()
        group = eng.create(vm=vm.name, name="g1", consistency="crash")
        repo = work / "repo"
        eng.export(group.uuid, to=str(repo))
        tops = lab.domblklist(vm.name)
        _guestfish(
            [tops["vda"], tops["vdb"]], "mount /dev/sdb /\nwrite /etc/app/conf a=2\n", ro=False
        )
        g2 = eng.create(vm=vm.name, name="g2", consistency="crash")
        incr = eng.export(g2.uuid, to=str(repo)).manifest
        group_files = [r.install_path for r in sorted(group.refs, key=lambda r: r.device_id)]
        backup_files = [
            str(repo / vm.uuid / incr.backup_id / d.file)
            for d in sorted(incr.disks, key=lambda d: d.device_id)
        ]
        listing = "mount-ro /dev/sdb /\nls /etc/app\n"
        for case, source, files in (
            ("first listing, a group's disk", FilesSource(group=group.uuid), group_files),
            (
                "first listing, an incremental backup",
                FilesSource(backup=incr.backup_id, at=str(repo)),
                backup_files,
            ),
        ):
            samples = rounds(
                runs,
                {
                    "snapgroup": lambda s=source: timed(  # type: ignore[misc]
                        lambda: eng.files(s, fs="vdb", path="/etc/app")
                    ),
                    "guestfish": lambda f=files: timed(  # type: ignore[misc]
                        lambda: _guestfish(f, listing, ro=True)
                    ),
                },
            )
            rows.append(
                compare(
                    NAME,
                    case,
                    samples,
                    "snapgroup",
                    "guestfish",
                    unit="s",
                    to_unit=Stats.of,
                    target=Target("<=", 1.2),
                )
            )
        out = work / "out"

        def ours() -> float:
            out.mkdir()
            seconds = timed(
                lambda: eng.extract(
                    FilesSource(group=group.uuid), ["/big.bin"], to=str(out), fs="vdb"
                )
            )
            shutil.rmtree(out)
            return seconds

        def bare() -> float:
            out.mkdir()
            seconds = timed(
                lambda: _guestfish(
                    group_files, f"mount-ro /dev/sdb /\ndownload /big.bin {out}/big.bin\n", ro=True
                )
            )
            shutil.rmtree(out)
            return seconds

        samples = rounds(runs, {"snapgroup": ours, "guestfish": bare})
        rows.append(
            compare(
                NAME,
                f"extract a {big} MiB file",
                samples,
                "snapgroup",
                "guestfish",
                unit="s",
                to_unit=Stats.of,
            )
        )
    return rows


def _instant_rows(runs: int, quick: bool) -> list[Row]:
    disk_mib = 1024 if quick else 4096
    cases = [(disk_mib, True)] if quick else [(disk_mib, True), (disk_mib, False), (1024, False)]
    return [_instant_row(runs, disk_mib, mib, cold) for mib, cold in cases]


def _drop_caches() -> None:
    """The page cache emptied (untimed): the repository is read from the disk."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as knob:
        knob.write("3\n")


def _instant_row(runs: int, disk_mib: int, written_mib: int, cold: bool) -> Row:
    with (
        lab.engine(f"{NAME}-ir") as eng,
        lab.lab_vm(f"{NAME}-ir", disks=1, disk_mib=disk_mib, start=False) as vm,
    ):
        lab.fill(lab.domblklist(vm.name)["vda"], written_mib)
        group = eng.create(vm=vm.name, name="g", consistency="crash")
        repo = vm.directory / "repo"
        backup = eng.export(group.uuid, to=str(repo)).manifest.backup_id

        def gone(name: str, files: list[str]) -> None:
            lab.virsh("destroy", name, timeout=120)
            lab.virsh("undefine", name, "--nvram", timeout=120)
            lab.remove(files)

        def instant() -> float:
            name = lab.unique("ir")
            with_copy: list[object] = []
            if cold:
                _drop_caches()
            seconds = timed(
                lambda: with_copy.append(
                    eng.instant_restore(
                        backup, source=str(repo), as_vm=name, disk_dir=str(vm.directory)
                    )
                )
            )
            done = with_copy[0][0]  # type: ignore[index]
            gone(name, list(done.files.values()))
            return seconds

        def flattened() -> float:
            name = lab.unique("fr")
            made: list[object] = []
            if cold:
                _drop_caches()
            seconds = timed(
                lambda: made.append(
                    eng.restore(
                        backup, source=str(repo), as_vm=name, disk_dir=str(vm.directory), start=True
                    )
                )
            )
            gone(name, list(made[0].files.values()))  # type: ignore[attr-defined]
            return seconds

        samples = rounds(runs, {"snapgroup": instant, "flattened": flattened})
    whole = written_mib == disk_mib
    return compare(
        INSTANT,
        f"instant recovery to a running VM, {disk_mib // 1024 or 1} GiB disk, "
        f"{written_mib // 1024 or written_mib} {'GiB' if written_mib >= 1024 else 'MiB'} written, "
        f"{'cold' if cold else 'warm'}",
        samples,
        "snapgroup",
        "flattened",
        unit="s",
        to_unit=Stats.of,
        target=Target("<=", 0.1) if whole and cold else None,
    )


def run(runs: int, quick: bool) -> list[Row]:
    return _files_rows(runs, quick)


def run_instant(runs: int, quick: bool) -> list[Row]:
    return _instant_rows(runs, quick)
