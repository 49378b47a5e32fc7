"""2. Guest disturbance: the freeze window (guest agent freeze -> thaw) of snapgroup's
application-consistent create vs libvirt's own `--quiesce` path, on the lab guest with
qemu-guest-agent and 4 disks (every one a mounted ext4 filesystem), pair by pair.

Both windows are read the same way, from libvirtd's own log of its agent traffic (debug
for the qemu.qemu_agent module only, into a file of this run, set with virt-admin and
restored afterwards): from sending guest-fsfreeze-freeze to receiving the reply to
guest-fsfreeze-thaw. snapgroup also records its window (freezeMillis, measured in-process
from the freeze request to the thaw's answer); the table shows both.

libvirt's --quiesce path freezes, then creates every overlay (a blockdev-create job per
disk inside QEMU), then switches, then thaws: the overlays are made inside the window.
snapgroup makes its overlays before it freezes; only the one switch call is inside.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bench import lab
from bench.timing import Row, Stats, Target, compare, rounds
from snapgroup.api import Engine
from snapgroup.testing.labvm import LAB_ROOT, LabVm

NAME = "freeze-window"
DISKS = 4
TARGET = Target("<=", 0.5)
BOOT_TIMEOUT_S = 180.0
_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})\+0000: (\d+): debug : "
    r"(?:qemuDomainObjEnterAgent:\d+ : Entering agent \(.* name=(\S+)\)"
    r"|qemuAgentCommandFull:\d+ : Send command '\{\"execute\":\"guest-fsfreeze-(\w+)\""
    r"|qemuAgentCommandFull:\d+ : (Receive) command reply)"
)


class AgentLog:
    """libvirtd's agent traffic, logged to a file of ours while the block runs. Other
    VMs' agents (other people's tests) log into it too: each request is attributed to a
    VM by the "Entering agent (... name=VM)" line its worker thread logged before it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def window(self, vm: str) -> Window | None:
        """`vm`'s freeze window logged since mark(); None unless exactly one freeze and
        one thaw of `vm` were logged."""
        with open(self.path, encoding="utf-8", errors="replace") as f:
            f.seek(self.offset)
            text = f.read()
        owner: dict[str, str] = {}  # worker thread -> the VM whose agent it entered
        pending: dict[str, tuple[str, float]] = {}  # thread -> (freeze|thaw, sent)
        done: dict[str, list[tuple[float, float]]] = {"freeze": [], "thaw": []}
        for line in text.splitlines():
            match = _LINE.match(line)
            if not match:
                continue
            stamp, thread, name, command, reply = match.groups()
            when = datetime.strptime(stamp + "+0000", "%Y-%m-%d %H:%M:%S.%f%z").timestamp()
            if name is not None:
                owner[thread] = name
            elif command is not None and owner.get(thread) == vm:
                pending[thread] = (command, when)
            elif reply is not None and thread in pending:
                command, sent = pending.pop(thread)
                if command in done:
                    done[command].append((sent, when))
        if len(done["freeze"]) != 1 or len(done["thaw"]) != 1:
            return None
        (freeze_sent, frozen), (thaw_sent, thawed) = done["freeze"][0], done["thaw"][0]
        return Window(
            total=thawed - freeze_sent,
            freeze=frozen - freeze_sent,
            between=thaw_sent - frozen,
            thaw=thawed - thaw_sent,
        )


@dataclass(frozen=True)
class Window:
    """One freeze window, seconds: the whole of it, and its three parts: the guest
    freezing (request -> reply), what the tool does while the guest is frozen (reply ->
    thaw request: the switch, and for libvirt also the overlays), the guest thawing."""

    total: float
    freeze: float
    between: float
    thaw: float


@contextlib.contextmanager
def agent_log() -> Iterator[AgentLog]:
    """Turn on libvirtd's agent debug log into a file of this run; restore on exit."""
    filters = lab.sh("virt-admin", "daemon-log-filters").split(":", 1)[1].strip()
    outputs = lab.sh("virt-admin", "daemon-log-outputs").split(":", 1)[1].strip()
    path = LAB_ROOT / f"{lab.unique('agent')}.log"
    lab.sh(
        "virt-admin",
        "daemon-log-filters",
        f"{filters} 1:qemu.qemu_agent 1:qemu.qemu_domain".strip(),
    )
    lab.sh("virt-admin", "daemon-log-outputs", f"{outputs} 1:file:{path}".strip())
    try:
        yield AgentLog(path)
    finally:
        lab.sh("virt-admin", "daemon-log-filters", filters)
        lab.sh("virt-admin", "daemon-log-outputs", outputs)
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _wait_for_agent(eng: Engine, vm: LabVm) -> None:
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    while True:
        try:
            if len(eng.hv.guest_filesystems(vm.uuid, timeout=5)) >= DISKS:
                return
        except Exception:
            if time.monotonic() > deadline:
                raise
        time.sleep(1)


def _measured(
    log: AgentLog, vm: LabVm, once: Callable[[], Callable[[], object]]
) -> dict[str, float]:
    """Run `once` (returns its undo) until its window is unambiguous."""
    for _attempt in range(5):
        log.mark()
        undo = once()
        window = log.window(vm.name)
        undo()
        if window is not None:
            return {
                "total": window.total,
                "freeze": window.freeze,
                "between": window.between,
                "thaw": window.thaw,
            }
    raise lab.BenchError("no unambiguous freeze window in 5 attempts")


def run(runs: int, quick: bool) -> list[Row]:
    with (
        lab.engine(NAME) as eng,
        lab.lab_vm("freeze", disks=DISKS, guest=True) as vm,
        agent_log() as log,
    ):
        _wait_for_agent(eng, vm)
        recorded: list[float] = []
        counter = [0]

        def ours_once() -> Callable[[], object]:
            group = eng.create(vm=vm.name, name="frozen", consistency="application")
            assert group.freeze_millis is not None, group
            recorded.append(group.freeze_millis / 1000)
            return lambda: eng.delete(group.uuid)

        def virsh_once() -> Callable[[], object]:
            counter[0] += 1
            overlays = lab.virsh_snapshot(vm, f"q{counter[0]}", quiesce=True)
            return lambda: lab.virsh_commit_back(vm, overlays)

        samples = rounds(
            runs,
            {
                "snapgroup": lambda: _measured(log, vm, ours_once),
                "virsh --quiesce": lambda: _measured(log, vm, virsh_once),
            },
        )
    ours, base = "snapgroup", "virsh --quiesce"
    row = compare(
        NAME,
        f"{DISKS} disks, lab guest, application-consistent",
        samples,
        f"{ours}.total",
        f"{base}.total",
        target=TARGET,
        note="freeze request -> thaw reply, from libvirtd's agent log",
    )
    row.ours_label, row.baseline_label = ours, base
    own = Stats.of(recorded[-runs:]).scaled(1000.0)
    row.extra["snapgroup_freezeMillis"] = own.to_json()
    row.note += f"; snapgroup's own freezeMillis {own.median:.0f} [{own.min:.0f}-{own.max:.0f}]"
    rows = [row]
    parts = (
        ("freeze", "guest freezing (freeze request -> reply)"),
        ("between", "frozen, tool at work (freeze reply -> thaw request)"),
        ("thaw", "guest thawing (thaw request -> reply)"),
    )
    for key, what in parts:
        part = compare(NAME, f"  part: {what}", samples, f"{ours}.{key}", f"{base}.{key}")
        part.ours_label, part.baseline_label = ours, base
        rows.append(part)
    return rows
