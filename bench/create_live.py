"""1. Live group create on a running VM with 1, 4 and 16 qcow2 disks.

Per round, back to back in rotated order: snapgroup's Python API call
(Engine.create), the snapgroup CLI as a new process, and virsh snapshot-create-as
--disk-only --atomic --no-metadata with a diskspec per disk. Each side's effect is undone
untimed (engine.delete; virsh blockcommit --active --pivot + rm) so the chain stays as it
was. All three create crash-consistent snapshots (no freeze: virsh is not asked to).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from bench import lab
from bench.timing import Row, Target, compare, rounds, timed
from snapgroup.api import Engine
from snapgroup.domain.models import DiskOverlay
from snapgroup.testing.labvm import LabVm

NAME = "create-live"
DISKS = (1, 4, 16)
TARGET_16 = Target("<=", 0.6)
# Issue 20: a 16-disk create as a whole process, without the daemon, against virsh; and
# served by the daemon, against our one libvirt call timed alone in the same rounds.
STANDALONE_16 = Target("<=", 1.5)
SERVED_VS_CALL_16 = Target("<=", 1.2)


def _api(eng: Engine, vm: LabVm) -> float:
    group_uuid = ""

    def create() -> None:
        nonlocal group_uuid
        group_uuid = eng.create(vm=vm.name, name="bench", consistency="crash").uuid

    seconds = timed(create)
    eng.delete(group_uuid)
    return seconds


def _cli(eng: Engine, vm: LabVm, env: dict[str, str]) -> float:
    """The `snapgroup` command as a new process: standalone, or served by a daemon."""
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
        done = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)  # noqa: S603
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


def _switch_only(eng: Engine, vm: LabVm, counter: list[int]) -> float:
    """The floor of our side: the one libvirt call a create makes
    (snapshotCreateXML with REUSE_EXT on every disk), timed alone, on overlays made
    untimed beforehand as the engine makes them."""
    counter[0] += 1
    overlays = [
        DiskOverlay(t, p, os.path.join(os.path.dirname(p), f"switch-{counter[0]}-{t}.qcow2"))
        for t, p in lab.domblklist(vm.name).items()
    ]
    for o in overlays:
        size = eng.images.chain(o.current, shared=True)[0].virtual_size
        eng.images.create_overlay(o.overlay, backing=o.current, backing_format="qcow2", size=size)
    seconds = timed(lambda: eng.hv.snapshot_disks(vm.uuid, overlays))
    lab.virsh_commit_back(vm, {o.target: o.overlay for o in overlays})
    return seconds


def _imports() -> float:
    """The standalone CLI's floor: a new interpreter that only imports what `snapgroup
    create` runs on (SQLAlchemy, SQLModel/pydantic, libvirt, snapgroup) and does nothing."""
    argv = [sys.executable, "-c", "import snapgroup.cli.main, snapgroup.api"]
    return timed(lambda: subprocess.run(argv, env=lab.process_env(), check=True))  # noqa: S603


def _client() -> float:
    """The daemon-served CLI's floor: a new interpreter importing the client alone."""
    argv = [sys.executable, "-c", "import snapgroup.cli.launch"]
    return timed(lambda: subprocess.run(argv, env=lab.process_env(), check=True))  # noqa: S603


def _measure(runs: int, eng: Engine, vm: LabVm) -> dict[str, list[float]]:
    counter = [0]
    with lab.daemon(eng) as d:
        return rounds(
            runs,
            {
                "api": lambda: _api(eng, vm),
                "cli": lambda: _cli(eng, vm, d.via),
                "cli standalone": lambda: _cli(eng, vm, d.standalone),
                "client": _client,
                "imports": _imports,
                "switch": lambda: _switch_only(eng, vm, counter),
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
            cli = compare(NAME, f"{case}, CLI process", samples, "cli", "virsh", target=target)
            cli.note = "served by a running `snapgroup daemon`"
            rows.append(cli)
            client = compare(NAME, "  floor: CLI client start-up only", samples, "client", "virsh")
            client.note = "python -c 'import snapgroup.cli.launch'"
            rows.append(client)
            standalone = compare(
                NAME,
                f"{case}, CLI process, standalone",
                samples,
                "cli standalone",
                "virsh",
                target=STANDALONE_16 if disks == 16 else None,
            )
            standalone.note = "no daemon: the engine's stack imported in the process"
            rows.append(standalone)
            switch = compare(
                NAME, "  floor: the one libvirt call alone", samples, "switch", "virsh"
            )
            switch.note = "snapshotCreateXML(DISK_ONLY|ATOMIC|NO_METADATA|REUSE_EXT)"
            rows.append(switch)
            served = compare(
                NAME,
                f"{case}, CLI process (daemon) vs the one libvirt call",
                samples,
                "cli",
                "switch",
                target=SERVED_VS_CALL_16 if disks == 16 else None,
            )
            served.note = "the whole command, client and daemon, over the call alone"
            rows.append(served)
            floor = compare(
                NAME, "  floor: standalone start-up + imports only", samples, "imports", "virsh"
            )
            floor.note = "python -c 'import snapgroup.cli.main, snapgroup.api'"
            rows.append(floor)
    return rows
