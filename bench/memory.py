"""Memory groups (issue 21): the pause the guest sees while its memory is saved with its
disks, and the time a revert takes to bring it back running. On the lab guest (256 MiB,
qemu-guest-agent, 3 disks), pair by pair.

Pause: from libvirt's own lifecycle events (`virsh event --timestamp`: Suspended ->
Resumed), for snapgroup's `create --with-memory` (ONE snapshotCreateXML onto overlays
made beforehand) and `virsh snapshot-create-as --memspec ... --diskspec ...` (libvirt
makes the overlays itself, inside the pause); paused and --live.

Revert: snapgroup's `revert` of a memory group (the safety group, fresh overlays, one
defineXML, the restore, the guest clock set through the agent) against `virsh restore`
of a `virsh save` file of the same guest; the VM is stopped before each, untimed. Two
figures: the whole command, and until the guest runs (its Resumed event); and, with no
target, the whole command against the same end state by hand (`virsh restore`, then
`virsh domtime --now`: the guest clock set through the agent, as ours sets it).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime

from bench import lab
from bench.timing import Row, Target, compare, rounds, timed
from snapgroup.api import Engine
from snapgroup.testing.labvm import LabVm

NAME = "memory"
DISKS = 3
PAUSE_TARGET = Target("<=", 1.0)
REVERT_TARGET = Target("<=", 1.2)
BOOT_TIMEOUT_S = 180.0
EVENT_WAIT_S = 10.0


class Pauses:
    """The domain's Suspended -> Resumed intervals, from `virsh event --loop`."""

    def __init__(self, vm: LabVm) -> None:
        argv = ["virsh", "-c", lab.URI, "event", vm.name, "--event", "lifecycle", "--loop"]
        argv.append("--timestamp")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)  # noqa: S603
        self.events: list[tuple[float, str]] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        time.sleep(0.5)  # registered before the first operation

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            stamp, _, rest = line.partition("+0000: ")
            kind = rest.rsplit(":", 1)[-1].split()[0] if rest else ""
            if kind in ("Suspended", "Resumed"):
                when = datetime.strptime(stamp + "+0000", "%Y-%m-%d %H:%M:%S.%f%z").timestamp()
                with self.cond:
                    self.events.append((when, kind))
                    self.cond.notify_all()

    def mark(self) -> int:
        with self.cond:
            return len(self.events)

    def _resumed(self, mark: int) -> None:
        deadline = time.monotonic() + EVENT_WAIT_S
        while not self.events[mark:] or self.events[-1][1] != "Resumed":
            left = deadline - time.monotonic()
            if left <= 0:
                raise lab.BenchError(f"no Resumed event: {self.events[mark:]}")
            self.cond.wait(left)

    def resumed_at(self, mark: int) -> float:
        """When the guest ran again after `mark` (host time, libvirt's stamp)."""
        with self.cond:
            self._resumed(mark)
            return next(when for when, kind in self.events[mark:] if kind == "Resumed")

    def since(self, mark: int) -> float:
        """Seconds paused since `mark`, once the guest has resumed."""
        with self.cond:
            self._resumed(mark)
            paused, start = 0.0, None
            for when, kind in self.events[mark:]:
                if kind == "Suspended":
                    start = when
                elif start is not None:
                    paused, start = paused + when - start, None
            return paused

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def _wait_for_agent(eng: Engine, vm: LabVm) -> None:
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    while True:
        try:
            eng.hv.guest_filesystems(vm.uuid, timeout=5)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
        time.sleep(1)


@contextlib.contextmanager
def _guest(eng: Engine) -> Iterator[LabVm]:
    with lab.lab_vm("memory", disks=DISKS, guest=True) as vm:
        _wait_for_agent(eng, vm)
        yield vm


def _pause_rows(runs: int, eng: Engine, vm: LabVm) -> list[Row]:
    pauses = Pauses(vm)
    counter = [0]

    def ours(live: bool) -> float:
        mark = pauses.mark()
        group = eng.create(vm=vm.name, name="m", with_memory=True, live=live)
        paused = pauses.since(mark)
        eng.delete(group.uuid)  # untimed: the file goes, the disks merge back
        return paused

    def virsh(live: bool) -> float:
        counter[0] += 1
        current = lab.domblklist(vm.name)
        directory = os.path.dirname(next(iter(current.values())))
        memory = os.path.join(directory, f"virsh-{counter[0]}.mem")
        overlays = {t: os.path.join(directory, f"virsh-{counter[0]}-{t}.qcow2") for t in current}
        argv = ["snapshot-create-as", vm.name, "--no-metadata", "--atomic"]
        argv += ["--memspec", f"file={memory},snapshot=external"]
        for target, overlay in overlays.items():
            argv += ["--diskspec", f"{target},snapshot=external,file={overlay}"]
        mark = pauses.mark()
        lab.virsh(*argv, *(["--live"] if live else []))
        paused = pauses.since(mark)
        lab.virsh_commit_back(vm, overlays)
        lab.remove([memory])
        return paused

    try:
        samples = rounds(
            runs,
            {
                "snapgroup": lambda: ours(False),
                "virsh": lambda: virsh(False),
                "snapgroup --live": lambda: ours(True),
                "virsh --live": lambda: virsh(True),
            },
        )
    finally:
        pauses.close()
    note = "Suspended -> Resumed, libvirt's lifecycle events"
    rows = []
    for ours_side, base, case in (
        ("snapgroup", "virsh", "pause of create --with-memory (paused save)"),
        ("snapgroup --live", "virsh --live", "pause of create --with-memory --live"),
    ):
        row = compare(NAME, case, samples, ours_side, base, target=PAUSE_TARGET, note=note)
        row.ours_label, row.baseline_label = ours_side, base + " snapshot-create-as --memspec"
        rows.append(row)
    return rows


def _revert_rows(runs: int, eng: Engine, vm: LabVm) -> list[Row]:
    group = eng.create(vm=vm.name, name="back-to", with_memory=True)
    events = Pauses(vm)
    save = os.path.join(str(vm.directory), "virsh.sav")
    lab.virsh("save", vm.name, save)  # the same guest's state, as virsh saves it

    def stopped() -> None:
        with contextlib.suppress(lab.BenchError):
            lab.virsh("destroy", vm.name)

    def measured(action: Callable[[], object]) -> dict[str, float]:
        stopped()
        mark = events.mark()
        started = time.time()
        took = timed(action)
        return {"whole": took, "running": events.resumed_at(mark) - started}

    try:
        samples = rounds(
            runs,
            {
                "snapgroup": lambda: measured(lambda: eng.revert(group.uuid)),
                "virsh": lambda: measured(lambda: lab.virsh("restore", save)),
                # The same end state by hand: restored, and the guest clock set (agent).
                "virsh+clock": lambda: measured(lambda: _restore_and_set_clock(vm, save)),
            },
        )
    finally:
        events.close()
        stopped()
        lab.remove([save])
    assert group.memory is not None
    rows = []
    for key, case, note in (
        (
            "whole",
            f"revert of a memory group to running ({group.memory.size >> 20} MiB state)",
            "the whole command, VM stopped before it (untimed); ours: safety group, "
            "overlays, defineXML, restore, then the guest clock set through the agent "
            "(its first answer after the resume), the old files and rows meanwhile",
        ),
        ("running", "  part: until the guest runs", "command start -> its Resumed event"),
    ):
        row = compare(
            NAME, case, samples, f"snapgroup.{key}", f"virsh.{key}", target=REVERT_TARGET, note=note
        )
        row.ours_label, row.baseline_label = "snapgroup revert", "virsh restore (virsh save)"
        rows.append(row)
    row = compare(
        NAME,
        "  the same, against restore + the guest clock set",
        samples,
        "snapgroup.whole",
        "virsh+clock.whole",
        note="virsh restore, then virsh domtime --now (the agent), as ours sets it: no target",
    )
    row.ours_label, row.baseline_label = "snapgroup revert", "virsh restore + domtime --now"
    rows.append(row)
    return rows


def _restore_and_set_clock(vm: LabVm, save: str) -> None:
    lab.virsh("restore", save)
    lab.virsh("domtime", vm.name, "--now")


def run(runs: int, quick: bool) -> list[Row]:
    with lab.engine(NAME) as eng, _guest(eng) as vm:
        rows = _pause_rows(runs, eng, vm)
        rows.extend(_revert_rows(runs, eng, vm))
    return rows
