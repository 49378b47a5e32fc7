"""4. Offline group create (stopped VM), 16 disks: snapgroup (Python API and CLI) vs a
plain loop of `qemu-img create -f qcow2 -F qcow2 -b TOP OVERLAY`, one per disk.

The loop only makes the files; snapgroup also records the group and switches the
domain's definition (one defineXML). Undone untimed: engine.delete; rm.
"""

from __future__ import annotations

import os

from bench import lab
from bench.create_live import _api, _cli
from bench.timing import Row, compare, rounds, timed
from snapgroup.testing.labvm import LabVm

NAME = "create-offline"
DISKS = 16


def _loop(vm: LabVm, counter: list[int]) -> float:
    counter[0] += 1
    tops = lab.domblklist(vm.name)
    overlays = [
        os.path.join(os.path.dirname(p), f"loop-{counter[0]}-{t}.qcow2") for t, p in tops.items()
    ]

    def create() -> None:
        for top, overlay in zip(tops.values(), overlays, strict=True):
            lab.sh("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", top, overlay)

    seconds = timed(create)
    lab.remove(overlays)
    return seconds


def run(runs: int, quick: bool) -> list[Row]:
    disks = 4 if quick else DISKS
    with lab.engine(NAME) as eng, lab.lab_vm("offline", disks=disks, start=False) as vm:
        counter = [0]
        with lab.daemon(eng) as d:
            samples = rounds(
                runs,
                {
                    "api": lambda: _api(eng, vm),
                    "cli": lambda: _cli(eng, vm, d.via),
                    "cli standalone": lambda: _cli(eng, vm, d.standalone),
                    "qemu-img loop": lambda: _loop(vm, counter),
                },
            )
    case = f"{disks} disks, CLI process"
    return [
        compare(NAME, f"{disks} disks, Python API", samples, "api", "qemu-img loop"),
        compare(NAME, f"{case} (daemon)", samples, "cli", "qemu-img loop"),
        compare(NAME, f"{case}, standalone", samples, "cli standalone", "qemu-img loop"),
    ]
