"""Snapshot policies: the `snapgroup autosnap` pass.

* Nothing due, 50 VMs (stopped lab domains with one disk each, each with a group of the
  policy taken today: a daily policy has nothing due until UTC midnight): the whole
  `snapgroup autosnap` process served by a running `snapgroup daemon` (target <= 0.3 s),
  and standalone for reference.
* A group of each of 8 running VMs: one pass (the Python API's Engine.autosnap, VMs in
  parallel; and the CLI process through the daemon) vs a sequential loop of
  `virsh snapshot-create-as --disk-only --atomic --no-metadata` over the same VMs
  (target <= 0.5x). Each side's groups or overlays are undone untimed (engine.delete;
  blockcommit --active --pivot), so every round finds the slot due again.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator

from bench import lab
from bench.timing import Row, Target, compare, ms, rounds, timed
from snapgroup.api import Engine
from snapgroup.domain.retention import Policy, Retention
from snapgroup.testing.labvm import LabVm

NAME = "autosnap"
IDLE_VMS = 50
BUSY_VMS = 8
TARGET_IDLE = Target("<=", 300.0, on="ours")
TARGET_BUSY = Target("<=", 0.5)


@contextlib.contextmanager
def _vms(label: str, count: int, *, start: bool) -> Iterator[list[LabVm]]:
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(lab.lab_vm(f"{label}{i}", disks=1, disk_mib=16, start=start))
            for i in range(count)
        ]


def _cli(eng: Engine, env: dict[str, str], *args: str) -> float:
    argv = [lab.SNAPGROUP_CLI, "--db", lab.db_url(eng), "--json", "autosnap", *args]

    def run() -> None:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)  # noqa: S603
        if done.returncode != 0:
            raise lab.BenchError(f"snapgroup autosnap failed: {done.stdout} {done.stderr}")

    return timed(run)


def _idle(runs: int, quick: bool) -> list[Row]:
    count = 10 if quick else IDLE_VMS
    with lab.engine(f"{NAME}-idle") as eng, _vms("idle", count, start=False) as vms:
        eng.set_policy(Policy("bench", Retention(daily=7), vms=tuple(v.name for v in vms)))
        first = eng.autosnap(parallel=4)  # today's group of each: nothing due after it
        if first.exit_status != 0 or any(r.taken is None for r in first.vms):
            raise lab.BenchError(f"the first pass failed: {first.to_json()}")
        with lab.daemon(eng) as d:
            samples = rounds(
                runs,
                {
                    "cli": lambda: _cli(eng, d.via),
                    "standalone": lambda: _cli(eng, d.standalone),
                },
            )
        after = eng.autosnap(dry_run=True)
        if any(r.taken or r.pruned for r in after.vms):
            raise lab.BenchError("something was due in the nothing-due bench")
    row = Row(
        bench=NAME,
        case=f"nothing due, {count} VMs, CLI process",
        unit="ms",
        ours=ms(samples["cli"]),
        ours_label="cli",
        target=TARGET_IDLE,
        note="served by a running `snapgroup daemon`",
    )
    standalone = Row(
        bench=NAME,
        case=f"nothing due, {count} VMs, CLI process, standalone",
        unit="ms",
        ours=ms(samples["standalone"]),
        ours_label="standalone",
        note="no daemon: the engine's stack imported in the process",
    )
    return [row, standalone]


def _undo(eng: Engine, uuids: list[str]) -> None:
    for uuid in uuids:
        report = eng.delete(uuid)
        if report.error is not None:
            raise lab.BenchError(f"undo failed: {report.error.details}")


def _api_pass(eng: Engine, count: int) -> float:
    report = None

    def run() -> None:
        nonlocal report
        report = eng.autosnap(parallel=count)

    seconds = timed(run)
    assert report is not None
    taken = [r.taken.uuid for r in report.vms if r.taken is not None]
    if report.exit_status != 0 or len(taken) != count:
        raise lab.BenchError(f"the pass failed: {report.to_json()}")
    _undo(eng, taken)
    return seconds


def _cli_pass(eng: Engine, env: dict[str, str], vms: list[LabVm]) -> float:
    seconds = _cli(eng, env, "--parallel", str(len(vms)))
    taken = [g.uuid for vm in vms for g in eng.list_groups(vm=vm.name)]
    if len(taken) != len(vms):
        raise lab.BenchError(f"the CLI pass took {len(taken)} groups, not {len(vms)}")
    _undo(eng, taken)
    return seconds


def _virsh_loop(vms: list[LabVm], counter: list[int]) -> float:
    counter[0] += 1
    made: list[tuple[LabVm, dict[str, str]]] = []

    def run() -> None:
        for vm in vms:
            made.append((vm, lab.virsh_snapshot(vm, f"as{counter[0]}")))

    seconds = timed(run)
    for vm, overlays in made:
        lab.virsh_commit_back(vm, overlays)
    return seconds


def _busy(runs: int, quick: bool) -> list[Row]:
    count = 4 if quick else BUSY_VMS
    counter = [0]
    with lab.engine(f"{NAME}-busy") as eng, _vms("busy", count, start=True) as vms:
        eng.set_policy(
            Policy(
                "bench", Retention(hourly=100), vms=tuple(v.name for v in vms), consistency="crash"
            )
        )
        with lab.daemon(eng) as d:
            samples = rounds(
                runs,
                {
                    "api": lambda: _api_pass(eng, count),
                    "cli": lambda: _cli_pass(eng, d.via, vms),
                    "virsh loop": lambda: _virsh_loop(vms, counter),
                },
            )
    case = f"a group of each of {count} running VMs"
    api = compare(NAME, f"{case}, Python API", samples, "api", "virsh loop", target=TARGET_BUSY)
    api.note = "Engine.autosnap, VMs in parallel"
    cli = compare(NAME, f"{case}, CLI process", samples, "cli", "virsh loop", target=TARGET_BUSY)
    cli.note = "served by a running `snapgroup daemon`"
    return [api, cli]


def run(runs: int, quick: bool) -> list[Row]:
    return [*_idle(runs, quick), *_busy(runs, quick)]
