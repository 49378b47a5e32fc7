"""Snapshot policies on the real stack: a running and a stopped VM under one policy
(hourly 3 + daily 2) through 30 simulated hourly ticks spanning three UTC days, time
injected (the engine's clock and the pass's now in-process; SNAPGROUP_TEST_NOW for the
`snapgroup autosnap` processes). Groups are taken and pruned by real merges; every
remaining group reads back its own point in time (qemu-io patterns written each tick);
verify is clean; a busy VM is waited for; a protected and a hand-made group survive;
the space guard refuses; a pass killed -9 mid-prune is finished by the next; status
goes WARN then CRIT when ticks stop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from snapgroup.api import Engine
from snapgroup.domain.retention import Policy, Retention, utc
from snapgroup.infra.locks import vm_lock
from snapgroup.testing.labvm import LabVm
from tests.lab.tools import domblklist, reads, write_live, write_offline

pytestmark = pytest.mark.lab

START = datetime(2026, 12, 1, 20, 30, tzinfo=UTC)
TICKS = 30
OFFSETS = 12  # tick i writes pattern i+1 at MiB i % OFFSETS of each VM's vda
HAND_PATTERN, HAND_OFFSET = 0x7F, 20
SPACE_TICK, BUSY_TICK, KILL_TICK, PROTECT_TICK = 10, 5, 15, 2


def _tick(i: int) -> datetime:
    return START + timedelta(hours=i)


def _cli(
    db: str, now: datetime, *args: str, fault: str | None = None
) -> tuple[int, dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if k != "SNAPGROUP_FAULT_STEP"}
    env["SNAPGROUP_TEST_NOW"] = now.isoformat()
    env["SNAPGROUP_NO_DAEMON"] = "1"
    if fault:
        env["SNAPGROUP_FAULT_STEP"] = fault
    done = subprocess.run(
        [sys.executable, "-m", "snapgroup", "--db", db, "--json", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=600,
    )
    return done.returncode, (json.loads(done.stdout) if done.stdout.strip() else {})


class World:
    """What each VM's vda holds now, and what each group must hold."""

    def __init__(self, engine: Engine, vms: list[LabVm]) -> None:
        self.engine, self.vms = engine, vms
        self.now: dict[str, dict[int, int]] = {vm.uuid: {} for vm in vms}
        self.expected: dict[str, dict[int, int]] = {}  # group uuid -> offset -> pattern

    def write(self, vm: LabVm, pattern: int, offset: int) -> None:
        if vm.uuid == self.vms[0].uuid:  # the running one
            write_live(vm.name, 0, pattern, offset)
        else:
            write_offline(domblklist(vm.name, inactive=True)["vda"], pattern, offset)
        self.now[vm.uuid][offset] = pattern

    def taken(self, vm_uuid: str, group_uuid: str) -> None:
        self.expected[group_uuid] = dict(self.now[vm_uuid])

    def check_groups(self) -> None:
        for vm in self.vms:
            for group in self.engine.list_groups(vm=vm.name):
                path = next(r.install_path for r in group.refs if r.device_id == 0)
                for offset, pattern in self.expected[group.uuid].items():
                    assert reads(path, pattern, offset), (group.name, offset, pattern)


@pytest.fixture
def two_vms(running_vm: LabVm, stopped_vm: LabVm) -> Iterator[list[LabVm]]:
    yield sorted([running_vm, stopped_vm], key=lambda v: v.uuid != running_vm.uuid)


def test_policy_through_thirty_ticks(engine: Engine, two_vms: list[LabVm], labdir: Path) -> None:
    db = f"sqlite:///{labdir / 'snapgroup.db'}"
    running, stopped = two_vms
    world = World(engine, two_vms)
    policy = Policy("lab", Retention(hourly=3, daily=2), vms=(running.name, stopped.name))
    engine.set_policy(policy)

    # hand-made groups, before the first tick: never pruned
    engine.clock = lambda: START - timedelta(minutes=10)
    by_hand = {}
    for vm in two_vms:
        world.write(vm, HAND_PATTERN, HAND_OFFSET)
        by_hand[vm.uuid] = engine.create(vm=vm.name, name="by-hand").uuid
        world.taken(vm.uuid, by_hand[vm.uuid])
    protected: set[str] = set()
    pruned_total = 0
    waited = 0.0

    for i in range(TICKS):
        now = _tick(i)
        engine.clock = lambda now=now: now
        for vm in two_vms:
            world.write(vm, i + 1, i % OFFSETS)
        if i == KILL_TICK:
            # killed -9 after the first disk of the first prune merged (one VM at a time)
            code, _ = _cli(db, now, "autosnap", "--parallel", "1", fault="delete:merged")
            assert code == -9
            pending = [op for op in engine.operations() if op.state == "running"]
            assert [op.kind for op in pending] == ["delete"]
            # the group taken before the prune began is recorded: find it by name
            for vm in two_vms:
                made = [g for g in engine.list_groups(vm=vm.name) if utc(g.create_date) == now]
                for g in made:
                    world.taken(vm.uuid, g.uuid)
            continue
        if i == KILL_TICK + 1:  # the next pass: recover finishes the delete, then its work
            code, report = _cli(db, now, "autosnap")
            assert code == 0, report
            assert [op for op in engine.operations() if op.state == "running"] == []
            for entry in report["vms"]:
                if entry["taken"]:
                    world.taken(entry["vm"]["uuid"], entry["taken"]["uuid"])
                pruned_total += len(entry["pruned"])
            world.check_groups()
            continue
        if i == SPACE_TICK:
            engine.set_policy(
                Policy("lab", policy.retention, vms=policy.vms, min_free_percent=99.99)
            )
        holder = None
        if i == BUSY_TICK:  # another operation holds the stopped VM's lock for 3 s
            held = threading.Event()

            def hold(held: threading.Event = held) -> None:
                with vm_lock(stopped.uuid):
                    held.set()
                    time.sleep(3)

            holder = threading.Thread(target=hold)
            holder.start()
            held.wait()
        started = time.monotonic()
        report = engine.autosnap(now=now, wait=60, parallel=2)
        if holder is not None:
            holder.join()
            waited = time.monotonic() - started
        if i == SPACE_TICK:
            assert report.exit_status == 1
            for entry in report.vms:
                assert entry.taken is None and entry.error is not None
                assert "below the policy's --min-free-percent 99.99: no group taken" in (
                    entry.error.details
                )
            engine.set_policy(policy)
            continue
        assert report.exit_status == 0, report.to_json()
        for entry in report.vms:
            assert entry.taken is not None, (i, entry.to_json())
            world.taken(entry.vm.uuid, entry.taken.uuid)
            pruned_total += len(entry.pruned)
            if i == PROTECT_TICK:
                engine.protect(entry.taken.uuid)
                protected.add(entry.taken.uuid)
        if i % 10 == 9:
            world.check_groups()

    assert waited >= 2.5  # the busy VM was waited for, not skipped
    assert pruned_total >= 2 * 15
    # what remains: hourly 3 (ticks 27-29), daily 2 (first of Dec 3: tick 28; of Dec 2:
    # tick 4), the protected (tick 2) and the hand-made
    keep_ticks = {2, 4, 27, 28, 29}
    for vm in two_vms:
        groups = engine.list_groups(vm=vm.name)
        auto = {utc(g.create_date) for g in groups if g.policy}
        assert auto == {_tick(t) for t in keep_ticks}, sorted(auto)
        uuids = {g.uuid for g in groups}
        assert by_hand[vm.uuid] in uuids and len(uuids & protected) == 1
    world.check_groups()
    # the check can fail: the hand-made group does not hold the pattern of tick 0
    hand = engine.get(by_hand[stopped.uuid])
    hand_path = next(r.install_path for r in hand.refs if r.device_id == 0)
    assert reads(hand_path, HAND_PATTERN, HAND_OFFSET) and not reads(hand_path, 1, 0)
    assert engine.verify() == []

    # a dry run an hour on: what would be taken and pruned, each delete's own plan,
    # and nothing changed (groups, files)
    last = _tick(TICKS - 1)
    before = {vm.uuid: {g.uuid for g in engine.list_groups(vm=vm.name)} for vm in two_vms}
    files = {p: p.stat().st_mtime_ns for vm in two_vms for p in vm.directory.glob("*.qcow2")}
    code, dry = _cli(db, last + timedelta(hours=1), "autosnap", "--dry-run")
    assert code == 0 and dry["dryRun"], dry
    for entry in dry["vms"]:
        assert entry["taken"]["uuid"] == "(new)" and len(entry["pruned"]) == 1
        plan = entry["prunePlans"][0]
        assert plan["groupUuid"] == entry["pruned"][0]["uuid"] and not plan["wouldRefuse"]
        assert plan["disks"] and all(d["mergeInto"] and d["bytes"] > 0 for d in plan["disks"])
    after = {vm.uuid: {g.uuid for g in engine.list_groups(vm=vm.name)} for vm in two_vms}
    assert after == before
    assert {p: p.stat().st_mtime_ns for p in files} == files

    # ticks stop: hourly WARN past 1.5 h, CRIT past 2 h
    assert engine.policy_status(now=last + timedelta(minutes=50)).state == "OK"
    warn = engine.policy_status(now=last + timedelta(minutes=100))
    assert warn.state == "WARN" and warn.exit_status == 1
    code, status = _cli(db, last + timedelta(minutes=130), "policy", "status")
    assert code == 2 and status["state"] == "CRIT"
    hourly = [s for v in status["vms"] for s in v["slots"] if s["slot"] == "hourly"]
    assert {s["state"] for s in hourly} == {"CRIT"}


def test_delete_dry_run_is_the_plan_delete_runs(engine: Engine, any_vm: LabVm) -> None:
    live = any_vm.uuid in subprocess.run(
        ["virsh", "-c", "qemu:///system", "list", "--uuid"], capture_output=True, text=True
    ).stdout.replace("-", "")
    first = engine.create(vm=any_vm.name, name="first")
    engine.create(vm=any_vm.name, name="second")
    before = {p: p.stat().st_mtime_ns for p in any_vm.directory.glob("*.qcow2")}
    plan = engine.delete_plan(first.uuid).to_json()
    assert {p: p.stat().st_mtime_ns for p in any_vm.directory.glob("*.qcow2")} == before
    assert plan["live"] is live and not plan["wouldRefuse"]
    assert plan["space"] and all(s["fits"] and s["free"] > s["needed"] > 0 for s in plan["space"])
    heirs = {}
    for disk in plan["disks"]:
        ref = next(r for r in first.refs if r.volume_snapshot_uuid == disk["snapshotUuid"])
        assert disk["mergeInto"] == ref.install_path and disk["kind"] == "intermediate"
        heirs[disk["mergeInto"]] = disk["mergeFrom"]
    engine.protect(first.uuid)
    protected = engine.delete_plan(first.uuid).to_json()
    assert (
        protected["wouldRefuse"] and "is protected; unprotect it first" in protected["problems"][0]
    )
    engine.protect(first.uuid, protected=False)
    assert engine.delete(first.uuid).error is None
    # as planned: each heir's file merged into the snapshot's, which took its place
    for into, source in heirs.items():
        assert Path(into).exists() and not Path(source).exists()
    assert engine.verify() == []
