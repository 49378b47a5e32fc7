"""Backups vs virtnbdbackup (Debian's package; libvirt checkpoints + QEMU dirty bitmaps
over NBD) on the same running VM: one 4 GiB disk with 1 GiB written, a full backup, then
1% of the disk changed through the running guest's block backend, then an incremental.

Per round, each side does a full then an incremental of the same data; ours is timed
from the group's create to the export's end (virtnbdbackup's time includes its own
checkpoint), bytes are what lands in the backup directory (every file: ours, the disks'
qcow2 files and the manifest; its, the data stream, XML, checkpoint and log files).
Untimed between rounds: both outputs removed, our groups deleted, libvirt's checkpoints
dropped (`-l full` starts a new chain).
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from bench import lab
from bench.timing import Row, Stats, Target, ratios, timed
from snapgroup.api import Engine
from snapgroup.testing.labvm import LabVm

NAME = "export-vs-virtnbdbackup"
# Both sides as they come, then both compressing (ours zstd in qcow2, its lz4).
MODES = ("plain", "compressed")


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _change(vm: str, mib: int, data_mib: int, pattern: int) -> None:
    """`mib` MiB changed in 1 MiB pieces spread over the written data, by the guest's
    own block backend (HMP qemu-io), so QEMU's dirty bitmap sees it."""
    step = max(1, data_mib // mib)
    for i in range(mib):
        io = f"write -P {pattern} {i * step}M 1M"
        lab.virsh(
            "qemu-monitor-command", vm, "--hmp", f'qemu-io -d virtio-disk0/virtio-backend "{io}"'
        )
    lab.virsh("qemu-monitor-command", vm, "--hmp", 'qemu-io -d virtio-disk0/virtio-backend "flush"')


def _timed_size(fn: Callable[[bool], int], full: bool) -> tuple[float, int]:
    box: list[int] = []
    return timed(lambda: box.append(fn(full))), box[0] if box else 0


def run(runs: int, quick: bool) -> list[Row]:
    if shutil.which("virtnbdbackup") is None:
        raise RuntimeError("virtnbdbackup is not installed (make bench installs it)")
    disk_mib = 1024 if quick else 4096
    data_mib = disk_mib // 4
    change_mib = max(1, disk_mib // 100)
    samples: dict[str, list[float]] = {}
    with (
        lab.engine(NAME) as eng,
        lab.lab_vm("nbd", disks=1, disk_mib=disk_mib, start=False) as vm,
    ):
        lab.fill(lab.domblklist(vm.name)["vda"], data_mib, pattern=0x5A)
        vm.start()
        work = vm.directory / "bench"
        for mode in MODES:
            _rounds(eng, vm, work, runs, mode, change_mib, data_mib, samples)
    rows = []
    levels = (("full", "full backup"), ("inc", f"incremental ({change_mib} MiB changed)"))
    for mode, (level, label) in itertools.product(MODES, levels):
        ours, nbd = f"{mode}.ours.{level}", f"{mode}.nbd.{level}"
        flags = " --compress" if mode == "compressed" else ""
        theirs = f"virtnbdbackup -l {level}{' -z' if mode == 'compressed' else ''}"
        rows.append(
            Row(
                NAME,
                f"{label}{', compressed' if flags else ''}, time (ours: create + export)",
                "s",
                Stats.of(samples[ours]),
                f"snapgroup create + export{flags}",
                Stats.of(samples[nbd]),
                theirs,
                Stats.of(ratios(samples[ours], samples[nbd])),
                Target("<=", 1.0),
            )
        )
        rows.append(
            Row(
                NAME,
                f"{label}{', compressed' if flags else ''}, bytes",
                "MiB",
                Stats.of(samples[f"{ours}.bytes"]),
                f"snapgroup backup files{flags}",
                Stats.of(samples[f"{nbd}.bytes"]),
                f"{theirs} output",
                Stats.of(ratios(samples[f"{ours}.bytes"], samples[f"{nbd}.bytes"])),
                Target("<=", 1.0),
            )
        )
    return rows


def _rounds(
    eng: Engine,
    vm: LabVm,
    work: Path,
    runs: int,
    mode: str,
    change_mib: int,
    data_mib: int,
    samples: dict[str, list[float]],
) -> None:
    """`runs` rounds (after a warm-up) of a full then an incremental backup by each side;
    `mode` "compressed": ours with --compress, virtnbdbackup with -z (lz4)."""
    packed = mode == "compressed"
    for i in range(runs + 1):  # the first round is a warm-up
        nbd_dir, repo = work / f"nbd-{mode}-{i}", work / f"repo-{mode}-{i}"
        work.mkdir(exist_ok=True)

        def nbd(level: str, nbd_dir: Path = nbd_dir) -> None:
            lab.sh(
                "virtnbdbackup",
                "-U",
                lab.URI,
                "-d",
                vm.name,
                "-l",
                level,
                "-o",
                str(nbd_dir),
                "-n",
                "-S",
                str(work),
                *(["-z"] if packed else []),
                timeout=None,
            )
            os.sync()

        groups: list[str] = []

        def ours(full: bool, repo: Path = repo, groups: list[str] = groups) -> int:
            before = _bytes(repo) if repo.exists() else 0
            g = eng.create(vm=vm.name, name=f"b{len(groups)}", consistency="crash")
            groups.append(g.uuid)
            eng.export(g.uuid, to=str(repo), full=full, compress=packed)
            os.sync()
            return _bytes(repo) - before  # the disks' files and the manifest

        figures: dict[str, float] = {}
        sizes: dict[str, int] = {}
        order = ["nbd", "ours"] if i % 2 else ["ours", "nbd"]
        for side in order:
            if side == "nbd":
                figures["nbd.full"] = timed(lambda: nbd("full"))
                sizes["nbd.full"] = _bytes(nbd_dir)
            else:
                figures["ours.full"], sizes["ours.full"] = _timed_size(ours, True)
        _change(vm.name, change_mib, data_mib, 0x30 + i)
        for side in order:
            if side == "nbd":
                before = _bytes(nbd_dir)
                figures["nbd.inc"] = timed(lambda: nbd("inc"))
                sizes["nbd.inc"] = _bytes(nbd_dir) - before
            else:
                figures["ours.inc"], sizes["ours.inc"] = _timed_size(ours, False)
        if i > 0:
            for key, value in figures.items():
                samples.setdefault(f"{mode}.{key}", []).append(value)
            for key, value in sizes.items():
                samples.setdefault(f"{mode}.{key}.bytes", []).append(value / 2**20)
        shutil.rmtree(nbd_dir, ignore_errors=True)
        shutil.rmtree(repo, ignore_errors=True)
        for g in reversed(groups):
            eng.delete(g)
