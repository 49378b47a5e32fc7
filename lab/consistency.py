#!/usr/bin/env python3
"""`make consistency`: is a snapshot group ONE point in time across a running VM's disks?

Boots the lab guest (lab/build_guest.py) with its writer on: round n appends "n" to /seq
on each data disk in serial order, fsync()ing each before the next (lab/guest/init). In
any point in time that is the same across the disks, the last values v1 (first disk),
v2, ... satisfy  v1 >= v2 >= ... >= v1 - 1.  Then, under that load:

* ours: N groups through the engine (--consistency application, crash or auto);
* the baseline: the same disks snapshotted the non-atomic way, one libvirt snapshot call
  per disk one after the other (LibvirtHypervisor.snapshot_disks once per disk), to show
  the check bites.

Each snapshot's data disks are read on the host (qemu-img convert -U to a raw copy, then
debugfs 'cat /seq'); a snapshot with ext4's needs_recovery flag (crash-consistent) is
journal-replayed on that copy first (e2fsck -fy). Application-consistent ones must be
clean without it: `e2fsck -fn` passes and needs_recovery is off.

    python lab/consistency.py [--snapshots 200] [--modes application,crash] [--baseline 60]

Prints the figures (boot-to-agent, snapshots, violations ours vs baseline, freeze window,
fallbacks); tests/lab/test_consistency.py runs the same harness with fewer snapshots.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from snapgroup.adapters.libvirt_hv import LibvirtHypervisor  # noqa: E402
from snapgroup.adapters.qemu_img import QemuImg  # noqa: E402
from snapgroup.api import Engine, open_engine  # noqa: E402
from snapgroup.domain.models import DiskOverlay  # noqa: E402
from snapgroup.testing.labvm import (  # noqa: E402
    LAB_ROOT,
    LabVm,
    cleanup_stale,
    create_lab_vm,
    lab_directory,
)

URI = "qemu:///system"
GUEST = REPO / "build" / "guest"
PREFIX = "sg-consistency-"
DATA_DISKS = 2  # serials sg-data1 < sg-data2: the writer's order is deviceId order
# acpi=noirq pci=nomsi: ~1 s faster boot under TCG (tests/lab/test_guest.py says why).
CMDLINE = "console=ttyS0 quiet panic=-1 acpi=noirq pci=nomsi sg.root=sg-root sg.writer=1"
BOOT_TIMEOUT_S = 120.0
READ_WORKERS = 2  # this host has 2 cores; reads run after the VM is stopped
# Snapshots per boot: libvirt refuses backing chains deeper than 200 layers, and every
# create walks the whole chain (qemu-img info --backing-chain), so keep them shorter.
PER_BOOT = 120


# -- the guest ---------------------------------------------------------------------------


@dataclass
class Guest:
    vm: LabVm
    boot_to_agent_s: float


def _virsh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["virsh", "-c", URI, *args], capture_output=True, text=True, check=check, timeout=60
    )


def agent(vm: str, command: str) -> object:
    out = _virsh("qemu-agent-command", vm, json.dumps({"execute": command}), "--timeout", "10")
    return json.loads(out.stdout)["return"]


def _wait_for_agent(vm: LabVm, started: float) -> float:
    while True:
        ping = _virsh(
            "qemu-agent-command", vm.name, '{"execute":"guest-ping"}', "--timeout", "1", check=False
        )
        if ping.returncode == 0:
            return time.monotonic() - started
        if time.monotonic() - started > BOOT_TIMEOUT_S:
            tail = vm.console_log.read_text(errors="replace")[-2000:] if vm.console_log else ""
            raise RuntimeError(f"{vm.name}: no guest agent after {BOOT_TIMEOUT_S} s\n{tail}")
        time.sleep(0.1)


@contextlib.contextmanager
def booted_guest(workdir: Path, *, memory_mib: int = 256) -> Iterator[Guest]:
    """The lab guest with its writer running and its agent answering; destroyed after."""
    kernel, initrd = GUEST / "vmlinuz", GUEST / "initrd.gz"
    if not (kernel.exists() and initrd.exists()):
        raise RuntimeError(f"no lab guest in {GUEST}: run `make guest` first")
    # QEMU (libvirt-qemu) must reach them: copies in the world-searchable work directory.
    boot = workdir / "boot"
    boot.mkdir(mode=0o755, exist_ok=True)
    shutil.copyfile(kernel, boot / "vmlinuz")
    shutil.copyfile(initrd, boot / "initrd.gz")
    cleanup_stale(PREFIX, uri=URI)
    name = f"{PREFIX}{uuid.uuid4().hex[:8]}"
    vm = create_lab_vm(
        lab_directory(name),
        name=name,
        data_disks=DATA_DISKS,
        kernel=boot / "vmlinuz",
        initrd=boot / "initrd.gz",
        cmdline=CMDLINE,
        memory_mib=memory_mib,
        guest_agent=True,
        start=False,
    )
    try:
        started = time.monotonic()
        vm.start()
        yield Guest(vm, _wait_for_agent(vm, started))
    finally:
        vm.destroy()


# -- taking snapshots --------------------------------------------------------------------


@dataclass
class Sample:
    """One point in time: each data disk's snapshot file, first disk first."""

    label: str
    files: tuple[str, ...]
    consistency_type: str | None = None
    freeze_millis: int | None = None
    note: str | None = None


def take_groups(engine: Engine, vm: LabVm, count: int, mode: str) -> list[Sample]:
    samples = []
    for i in range(count):
        group = engine.create(vm=vm.uuid, name=f"{mode}-{i}", consistency=mode)
        data = sorted((r for r in group.refs if r.volume_type == "Data"), key=lambda r: r.device_id)
        samples.append(
            Sample(
                label=f"{mode} #{i}",
                files=tuple(r.install_path for r in data),
                consistency_type=group.consistency_type,
                freeze_millis=group.freeze_millis,
                note=group.consistency_note,
            )
        )
    return samples


def take_non_atomic(hv: LibvirtHypervisor, vm: LabVm, count: int) -> list[Sample]:
    """The deliberately wrong way: one libvirt snapshot call per disk, one disk after
    the other (each call atomic for its one disk only), no freeze. As in ours, the
    overlays are made first, so the calls follow each other as closely as they can."""
    images = QemuImg()
    samples = []
    for i in range(count):
        overlays = []
        for disk in hv.lookup(vm.uuid).disks:
            assert disk.path is not None
            overlay = str(Path(disk.path).parent / f"{uuid.uuid4().hex}.qcow2")
            size = images.chain(disk.path, shared=True)[0].virtual_size
            images.create_overlay(overlay, backing=disk.path, backing_format="qcow2", size=size)
            overlays.append(DiskOverlay(disk.target, disk.path, overlay))
        for o in overlays:
            hv.snapshot_disks(vm.uuid, [o])
        # The old tops are the snapshots; the root disk (first) carries no /seq.
        samples.append(Sample(f"baseline #{i}", tuple(o.current for o in overlays[1:])))
    return samples


# -- reading them on the host ------------------------------------------------------------


@dataclass
class Reading:
    sample: Sample
    values: tuple[int, ...]
    needed_recovery: tuple[bool, ...]  # ext4 needs_recovery, per data disk
    fsck_clean: tuple[bool, ...]  # e2fsck -fn exit 0 (before any replay), per data disk

    @property
    def violation(self) -> bool:
        return not consistent(self.values)


def consistent(values: Sequence[int]) -> bool:
    """The writer's invariant: v1 >= v2 >= ... >= vk >= v1 - 1."""
    ordered = all(a >= b for a, b in itertools.pairwise(values))
    return ordered and values[-1] >= values[0] - 1


def last_value(seq: str) -> int:
    """The last number in a /seq file; 0 when empty (the writer had not written yet)."""
    lines = [line for line in seq.replace("\0", "").splitlines() if line.strip()]
    return int(lines[-1]) if lines else 0


def _tool(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)


def read_disk(snapshot: str, scratch: Path) -> tuple[int, bool, bool]:
    """(last /seq value, needed journal recovery, e2fsck -fn clean) of one snapshot file
    (with its backing chain), read from a raw copy that is deleted afterwards."""
    raw = scratch / f"{uuid.uuid4().hex}.raw"
    try:
        convert = _tool(["qemu-img", "convert", "-U", "-O", "raw", snapshot, str(raw)])
        if convert.returncode != 0:
            raise RuntimeError(f"qemu-img convert {snapshot}: {convert.stderr.strip()}")
        features = _tool(["debugfs", "-R", "features", str(raw)]).stdout
        needs_recovery = "needs_recovery" in features
        clean = _tool(["e2fsck", "-fn", str(raw)]).returncode == 0
        if needs_recovery:
            # Crash-consistent: what the guest would see after a reboot is the journal
            # replayed. The copy is ours to change.
            replay = _tool(["e2fsck", "-fy", str(raw)])
            if replay.returncode not in (0, 1):  # 1: errors corrected
                raise RuntimeError(f"e2fsck -fy on {snapshot}: {replay.stdout[-500:]}")
        cat = _tool(["debugfs", "-R", "cat /seq", str(raw)])
        if cat.returncode != 0:
            raise RuntimeError(f"debugfs cat /seq on {snapshot}: {cat.stderr.strip()}")
        return last_value(cat.stdout), needs_recovery, clean
    finally:
        raw.unlink(missing_ok=True)


def read_sample(sample: Sample, scratch: Path) -> Reading:
    disks = [read_disk(f, scratch) for f in sample.files]
    return Reading(
        sample,
        tuple(d[0] for d in disks),
        tuple(d[1] for d in disks),
        tuple(d[2] for d in disks),
    )


def read_all(samples: Sequence[Sample], scratch: Path) -> list[Reading]:
    with ThreadPoolExecutor(max_workers=READ_WORKERS) as pool:
        return list(pool.map(lambda s: read_sample(s, scratch), samples))


# -- the run -----------------------------------------------------------------------------


@dataclass
class ModeFigures:
    mode: str
    readings: list[Reading]
    seconds: float  # taking them

    @property
    def violations(self) -> list[Reading]:
        return [r for r in self.readings if r.violation]

    @property
    def freeze_millis(self) -> list[int]:
        return [r.sample.freeze_millis for r in self.readings if r.sample.freeze_millis is not None]

    @property
    def types(self) -> Counter[str]:
        return Counter(str(r.sample.consistency_type) for r in self.readings)

    @property
    def notes(self) -> Counter[str]:
        return Counter(r.sample.note for r in self.readings if r.sample.note)

    @property
    def application(self) -> list[Reading]:
        return [r for r in self.readings if r.sample.consistency_type == "Application"]

    @property
    def unclean_application(self) -> list[Reading]:
        """Application-consistent snapshots that need journal recovery or fail e2fsck -fn."""
        return [r for r in self.application if any(r.needed_recovery) or not all(r.fsck_clean)]


@dataclass
class Figures:
    boot_to_agent_s: list[float]  # one per boot
    ours: list[ModeFigures]
    baseline: ModeFigures | None
    writer_rounds_per_s: float
    read_seconds: float

    def report(self) -> str:
        boots = ", ".join(f"{b:.1f}" for b in self.boot_to_agent_s)
        lines = [f"boot-to-agent (TCG, virsh start -> first guest-ping): {boots} s"]
        lines.append(f"writer: ~{self.writer_rounds_per_s:.0f} rounds/s during the run")
        for m in [*self.ours, *([self.baseline] if self.baseline else [])]:
            n = len(m.readings)
            lines.append(
                f"{m.mode}: {n} snapshots in {m.seconds:.0f} s, "
                f"{len(m.violations)} violations"
                + (f" (e.g. {m.violations[0].values})" if m.violations else "")
            )
            if m.freeze_millis:
                ms = sorted(m.freeze_millis)
                lines.append(
                    f"  freeze window (freeze sent -> thaw answered): median "
                    f"{statistics.median(ms):.0f} ms, min {ms[0]}, max {ms[-1]} ms"
                )
            if m.mode != "baseline":
                lines.append(f"  recorded as: {dict(m.types)}")
                for note, times in m.notes.items():
                    lines.append(f"  fallback x{times}: {note}")
            if m.application:
                lines.append(
                    f"  e2fsck -fn clean without journal recovery: "
                    f"{len(m.application) - len(m.unclean_application)}/{len(m.application)}"
                )
            recovered = sum(any(r.needed_recovery) for r in m.readings)
            if recovered:
                lines.append(f"  needed ext4 journal replay before reading: {recovered}/{n}")
        lines.append(f"reading all snapshots on the host: {self.read_seconds:.0f} s")
        return "\n".join(lines)


def sessions(tasks: Sequence[tuple[str, int]], limit: int) -> list[list[tuple[str, int]]]:
    """Split (mode, count) tasks, in order, into boots of at most `limit` snapshots."""
    out: list[list[tuple[str, int]]] = []
    current: list[tuple[str, int]] = []
    used = 0
    for mode, count in tasks:
        while count > 0:
            take = min(count, limit - used)
            current.append((mode, take))
            used, count = used + take, count - take
            if used == limit:
                out.append(current)
                current, used = [], 0
    if current:
        out.append(current)
    return out


def run(
    *,
    groups: Mapping[str, int],
    baseline: int = 60,
    per_boot: int = PER_BOOT,
    workdir: Path | None = None,
) -> Figures:
    """Take groups[mode] groups per mode (in that order) then `baseline` non-atomic
    snapshots, all under the guest's writer; each boot takes at most `per_boot`, then its
    VM is stopped, its snapshots read and counted, and it is destroyed."""
    LAB_ROOT.mkdir(parents=True, exist_ok=True)
    base = Path(workdir) if workdir else LAB_ROOT / f"run-{uuid.uuid4().hex[:8]}"
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)
    scratch = base / "scratch"
    scratch.mkdir(exist_ok=True)
    engine = open_engine(connect=URI, db=f"sqlite:///{base / 'snapgroup.db'}")
    hv = LibvirtHypervisor(URI)
    results: dict[str, ModeFigures] = {}
    boots: list[float] = []
    rates: list[float] = []
    read_seconds = 0.0
    try:
        for session in sessions([*groups.items(), ("baseline", baseline)], per_boot):
            with booted_guest(base) as guest:
                boots.append(guest.boot_to_agent_s)
                taken: list[tuple[str, list[Sample], float]] = []
                for mode, count in session:
                    t0 = time.monotonic()
                    if mode == "baseline":
                        samples = take_non_atomic(hv, guest.vm, count)
                    else:
                        samples = take_groups(engine, guest.vm, count, mode)
                    taken.append((mode, samples, time.monotonic() - t0))
                guest.vm.stop()  # the snapshots are immutable now; free the CPU for reads
                t0 = time.monotonic()
                readings = [(m, read_all(samples, scratch), secs) for m, samples, secs in taken]
                read_seconds += time.monotonic() - t0
            for mode, read, seconds in readings:
                figures = results.setdefault(mode, ModeFigures(mode, [], 0.0))
                figures.readings.extend(read)
                figures.seconds += seconds
            first, last = readings[0][1][0].values[0], readings[-1][1][-1].values[0]
            rates.append((last - first) / max(sum(secs for _m, _r, secs in readings), 1e-9))
        return Figures(
            boot_to_agent_s=boots,
            ours=[f for m, f in results.items() if m != "baseline"],
            baseline=results.get("baseline"),
            writer_rounds_per_s=statistics.mean(rates) if rates else 0.0,
            read_seconds=read_seconds,
        )
    finally:
        hv.close()
        engine.db.dispose()
        if workdir is None:
            shutil.rmtree(base, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--snapshots", type=int, default=200, help="groups per mode")
    parser.add_argument(
        "--modes", default="application,crash", help="comma-separated: application,crash,auto"
    )
    parser.add_argument("--baseline", type=int, default=60, help="non-atomic snapshots")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (libvirt qemu:///system, lab files)", file=sys.stderr)
        return 2
    groups = {mode: args.snapshots for mode in args.modes.split(",")}
    figures = run(groups=groups, baseline=args.baseline)
    print(figures.report())
    ours_bad = sum(len(m.violations) + len(m.unclean_application) for m in figures.ours)
    return 1 if ours_bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
