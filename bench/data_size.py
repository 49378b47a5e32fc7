"""3. Independence from data size: a live group create on 4 disks holding 20 GiB of
written data (5 GiB each) against the same create on 4 empty disks, pair by pair.

Both VMs run; each create is undone (engine.delete: an active commit of the tiny new
overlay) untimed. The data is written offline with qemu-io before the VM starts.
"""

from __future__ import annotations

import os
import time

from bench import lab
from bench.create_live import _api
from bench.timing import Row, Target, compare, rounds

NAME = "data-size"
DISKS = 4
TARGET = Target("<=", 1.1)
SETTLE_S = 5.0


def run(runs: int, quick: bool) -> list[Row]:
    per_disk_mib = 256 if quick else 5 * 1024
    disk_mib = per_disk_mib + 1024
    with (
        lab.engine(NAME) as eng,
        lab.lab_vm("data", disks=DISKS, disk_mib=disk_mib, start=False) as full,
        lab.lab_vm("empty", disks=DISKS, disk_mib=disk_mib) as empty,
    ):
        for disk in full.disks:
            lab.fill(str(disk), per_disk_mib)
        os.sync()  # the data on disk, not dirty in the page cache while we time
        full.start()
        time.sleep(SETTLE_S)  # past the firmware's start-up, as the other VM is
        # A round is ~0.2 s against tens of ms of noise from the other users: 3x rounds.
        samples = rounds(
            3 * runs,
            {"full": lambda: _api(eng, full), "empty": lambda: _api(eng, empty)},
        )
    total_gib = DISKS * per_disk_mib / 1024
    return [
        compare(
            NAME,
            f"{DISKS} disks, {total_gib:g} GiB written vs empty",
            samples,
            "full",
            "empty",
            target=TARGET,
        )
    ]
