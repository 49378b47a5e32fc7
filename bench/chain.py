"""7. Chain length: what a live create and a delete cost as each volume's chain grows to
100 snapshots (4 disks), against virsh at the same depth, pair by pair.

The chain is grown with snapgroup groups. At each depth, per round: snapgroup creates a
group (timed) and deletes it again (timed: an active commit with pivot per disk), and
virsh takes a --disk-only --atomic --no-metadata snapshot (timed) and blockcommits it
back (--active --pivot per disk, timed), so the depth stays where it is.
"""

from __future__ import annotations

from bench import lab
from bench.timing import Row, compare, rounds, timed
from snapgroup.api import Engine
from snapgroup.testing.labvm import LabVm

NAME = "chain-length"
DISKS = 4
DEPTHS = (1, 10, 25, 50, 100)


def _ours(eng: Engine, vm: LabVm) -> dict[str, float]:
    uuid = ""

    def create() -> None:
        nonlocal uuid
        uuid = eng.create(vm=vm.name, name="probe", consistency="crash").uuid

    created = timed(create)
    deleted = timed(lambda: eng.delete(uuid))
    return {"create": created, "delete": deleted}


def _virsh(vm: LabVm, counter: list[int]) -> dict[str, float]:
    counter[0] += 1
    overlays: dict[str, str] = {}

    def create() -> None:
        nonlocal overlays
        overlays = lab.virsh_snapshot(vm, f"chain{counter[0]}")

    created = timed(create)
    deleted = timed(lambda: lab.virsh_commit_back(vm, overlays))
    return {"create": created, "delete": deleted}


def run(runs: int, quick: bool) -> list[Row]:
    depths = (1, 10) if quick else DEPTHS
    rows = []
    with lab.engine(NAME) as eng, lab.lab_vm("chain", disks=DISKS) as vm:
        depth, counter = 0, [0]
        for wanted in depths:
            while depth < wanted:
                eng.create(vm=vm.name, name=f"layer-{depth}", consistency="crash")
                depth += 1
            samples = rounds(
                runs, {"snapgroup": lambda: _ours(eng, vm), "virsh": lambda: _virsh(vm, counter)}
            )
            for what in ("create", "delete"):
                native = "snapshot-create-as" if what == "create" else "blockcommit --pivot"
                row = compare(
                    NAME,
                    f"{what} at depth {wanted} ({DISKS} disks)",
                    samples,
                    f"snapgroup.{what}",
                    f"virsh.{what}",
                    note=f"virsh {native}",
                )
                rows.append(row)
    return rows
