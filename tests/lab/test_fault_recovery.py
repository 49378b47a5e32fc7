"""SIGKILL the snapgroup process at every named step of create and delete, live and
offline, then `snapgroup recover`: metadata, domain, chains and data must all be whole."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from snapgroup.api import Engine
from snapgroup.domain.planner import expected_chain
from snapgroup.store.repo import Repo
from snapgroup.testing.labvm import LabVm
from tests.lab.tools import backing_chain, domblklist, export, same, write_live, write_offline

pytestmark = pytest.mark.lab
TARGETS = ["vda", "vdb", "vdc"]
CREATE_STEPS = ["create:begin", "create:overlays", "create:switched"]
DELETE_STEPS = [
    "delete:begin",
    "delete:merge",
    "delete:merging",
    "delete:committed",
    "delete:merged",
    "delete:removed",
]


def snapgroup(db: str, *args: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("SNAPGROUP_FAULT_STEP", None)
    if fault:
        env["SNAPGROUP_FAULT_STEP"] = fault
    return subprocess.run(
        [sys.executable, "-m", "snapgroup", "--db", db, "--json", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


def is_running(vm: LabVm) -> bool:
    return (
        vm.name
        in subprocess.run(
            ["virsh", "list", "--name"], capture_output=True, text=True, check=True
        ).stdout.split()
    )


def assert_whole(engine: Engine, vm: LabVm, live: bool) -> None:
    """The invariants recover promises."""
    disks = domblklist(vm.name, inactive=not live)
    in_use: set[str] = set()
    with engine.db.transaction() as session:
        repo = Repo(session)
        for volume in repo.volumes_of_vm(vm.uuid, attached_only=True):
            assert disks[volume.target] == volume.install_path
            expected = expected_chain(volume, repo.snapshots_of_volume(volume.uuid))
            assert backing_chain(volume.install_path) == expected
            in_use.update(expected)
    assert {str(p) for p in vm.directory.glob("*.qcow2")} == in_use  # no orphan overlays
    assert [op for op in engine.operations() if op.state == "running"] == []


def _setup(engine: Engine, vm: LabVm, live: bool) -> list[str]:
    groups = []
    for n in range(2):
        for disk, target in enumerate(TARGETS):
            if live:
                write_live(vm.name, disk, 0x40 + n, n)
            else:
                write_offline(domblklist(vm.name, inactive=True)[target], 0x40 + n, n)
        groups.append(engine.create(vm=vm.name, name=f"g{n}").uuid)
    return groups


def _saved_views(engine: Engine, vm: LabVm, live: bool, dest: Path) -> dict[str, Path]:
    dest.mkdir()
    views = {
        f"now-{t}": export(p, dest / f"now-{t}.qcow2")
        for t, p in domblklist(vm.name, inactive=not live).items()
    }
    for g in engine.list_groups():
        for ref in g.refs:
            views[ref.volume_snapshot_uuid] = export(
                ref.install_path, dest / f"{ref.volume_snapshot_uuid}.qcow2"
            )
    return views


def _check_views(engine: Engine, vm: LabVm, live: bool, views: dict[str, Path]) -> None:
    for t, path in domblklist(vm.name, inactive=not live).items():
        assert same(views[f"now-{t}"], path), f"current data of {t} changed"
    for g in engine.list_groups():
        for ref in g.refs:
            # a group taken during the test holds what was current before it
            saved = views.get(ref.volume_snapshot_uuid, views[f"now-{TARGETS[ref.device_id]}"])
            assert same(saved, ref.install_path), ref


def _kill_then_recover(db: str, fault: str, *args: str) -> str:
    killed = snapgroup(db, *args, fault=fault)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stdout, killed.stderr)
    recovered = snapgroup(db, "recover")
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    (op,) = json.loads(recovered.stdout)["inventories"]
    again = snapgroup(db, "recover")
    assert json.loads(again.stdout)["inventories"] == []  # idempotent
    state: str = op["state"]
    return state


@pytest.mark.parametrize("step", CREATE_STEPS)
def test_create_killed_at_every_step(
    engine: Engine, any_vm: LabVm, step: str, tmp_path: Path
) -> None:
    live = is_running(any_vm)
    before = _setup(engine, any_vm, live)
    views = _saved_views(engine, any_vm, live, tmp_path / "views")
    state = _kill_then_recover(engine.db.url, step, "create", "--vm", any_vm.name, "--name", "g2")
    groups = [g.uuid for g in engine.list_groups()]
    assert groups[:2] == before
    if step == "create:switched":
        assert (state, len(groups)) == ("done", 3)  # the snapshot was taken: kept
    else:
        assert (state, len(groups)) == ("rolled-back", 2)
    assert_whole(engine, any_vm, live)
    _check_views(engine, any_vm, live, views)


# Live merges are one libvirt block job (no separate commit step; "merging" is the job
# under way); offline merges are qemu-img commit then a rebase or redefine.
LIVE_STEPS = [s for s in DELETE_STEPS if s != "delete:committed"]
OFFLINE_STEPS = [s for s in DELETE_STEPS if s != "delete:merging"]


@pytest.mark.parametrize(
    ("any_vm", "step"),
    [("live", s) for s in LIVE_STEPS] + [("offline", s) for s in OFFLINE_STEPS],
    indirect=["any_vm"],
)
def test_delete_killed_at_every_step(
    engine: Engine, any_vm: LabVm, step: str, tmp_path: Path
) -> None:
    live = is_running(any_vm)
    groups = _setup(engine, any_vm, live)
    views = _saved_views(engine, any_vm, live, tmp_path / "views")
    state = _kill_then_recover(engine.db.url, step, "delete", groups[0])
    assert state == "done"
    assert [g.uuid for g in engine.list_groups()] == [groups[1]]
    assert_whole(engine, any_vm, live)
    _check_views(engine, any_vm, live, views)
