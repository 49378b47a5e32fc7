"""1. Live group create on a running VM with 1, 4 and 16 qcow2 disks.

Per round, back to back in rotated order: snapgroup's Python API call
(Engine.create), the snapgroup CLI as a new process, and virsh snapshot-create-as
--disk-only --atomic --no-metadata with a diskspec per disk. Each side's effect is undone
untimed (engine.delete; virsh blockcommit --active --pivot + rm) so the chain stays as it
was. All three create crash-consistent snapshots (no freeze: virsh is not asked to).
"""

from __future__ import annotations

import json
import subprocess
import sys

from bench import lab
from bench.timing import Row, Target, compare, rounds, timed
from snapgroup.engine import Engine
from snapgroup.testing.labvm import LabVm

NAME = "create-live"
DISKS = (1, 4, 16)
TARGET_16 = Target("<=", 0.6)


def _api(eng: Engine, vm: LabVm) -> float:
    group_uuid = ""

    def create() -> None:
        nonlocal group_uuid
        group_uuid = eng.create(vm=vm.name, name="bench", consistency="crash").uuid

    seconds = timed(create)
    eng.delete(group_uuid)
    return seconds


def _cli(eng: Engine, vm: LabVm) -> float:
    argv = [
        lab.SNAPGROUP_CLI,
        "--db",
        lab.db_url(eng),
        "--json",
        "create",
        "--vm",
        vm.name,
        "--name",
        "bench",
        "--consistency",
        "crash",
    ]
    out = ""

    def create() -> None:
        nonlocal out
        done = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603
        if done.returncode != 0:
            raise lab.BenchError(f"snapgroup create failed: {done.stdout} {done.stderr}")
        out = done.stdout

    seconds = timed(create)
    eng.delete(json.loads(out)["inventory"]["uuid"])
    return seconds


def _virsh(vm: LabVm, counter: list[int]) -> float:
    counter[0] += 1
    overlays: dict[str, str] = {}

    def create() -> None:
        nonlocal overlays
        overlays = lab.virsh_snapshot(vm, str(counter[0]))

    seconds = timed(create)
    lab.virsh_commit_back(vm, overlays)
    return seconds


def _imports() -> float:
    """The CLI's floor: a new interpreter that only imports what `snapgroup create` runs
    on (SQLAlchemy, SQLModel/pydantic, libvirt, snapgroup) and does nothing."""
    argv = [sys.executable, "-c", "import snapgroup.cli.main, snapgroup.api"]
    return timed(lambda: subprocess.run(argv, check=True))  # noqa: S603


def _measure(runs: int, eng: Engine, vm: LabVm) -> dict[str, list[float]]:
    counter = [0]
    return rounds(
        runs,
        {
            "api": lambda: _api(eng, vm),
            "cli": lambda: _cli(eng, vm),
            "imports": _imports,
            "virsh": lambda: _virsh(vm, counter),
        },
    )


def run(runs: int, quick: bool) -> list[Row]:
    rows = []
    for disks in (1, 4) if quick else DISKS:
        with lab.engine(NAME) as eng, lab.lab_vm(f"live{disks}", disks=disks) as vm:
            samples = _measure(runs, eng, vm)
            target = TARGET_16 if disks == 16 else None
            case = f"{disks} disk{'s' if disks > 1 else ''}"
            rows.append(
                compare(NAME, f"{case}, Python API", samples, "api", "virsh", target=target)
            )
            rows.append(
                compare(NAME, f"{case}, CLI process", samples, "cli", "virsh", target=target)
            )
            floor = compare(
                NAME, "  floor: CLI start-up + imports only", samples, "imports", "virsh"
            )
            floor.note = "python -c 'import snapgroup.cli.main, snapgroup.api'"
            rows.append(floor)
    return rows
