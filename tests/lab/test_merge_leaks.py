"""An offline delete killed mid-merge (a real `snapgroup delete` process, SIGKILLed while
`qemu-img commit` writes hundreds of MiB into the snapshot below) leaves no leaked
clusters behind `recover`: every file of the chain passes `qemu-img check`, every group
holds what it held, and `verify` is clean. A leak recovery must leave (its file is open
in a running VM) is a warning in `verify` until `verify --repair` can free it."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from snapgroup.api import Engine
from snapgroup.testing.labvm import LabVm, create_lab_vm, lab_directory
from tests.lab.test_fault_recovery import snapgroup
from tests.lab.tools import domblklist, export, same, sh
from tests.qcow2_leaks import check, leak_a_cluster

pytestmark = pytest.mark.lab
DATA_MIB = 384  # written between the two groups: what the killed commit copies
_RANDOM = random.Random(20)  # the "random" moments, the same in every run


@pytest.fixture
def big_vm(labdir: Path) -> Iterator[LabVm]:
    """A stopped lab VM with 1 GiB disks and two groups: g0, then DATA_MIB MiB written
    on vda, then g1 (so deleting g0 commits g1's big layer into g0's file)."""
    name = f"sg-leak-{uuid.uuid4().hex[:8]}"
    vm = create_lab_vm(lab_directory(name), name=name, start=False, disk_mib=1024)
    try:
        yield vm
    finally:
        vm.destroy()


def _two_groups(engine: Engine, vm: LabVm) -> list[str]:
    g0 = engine.create(vm=vm.name, name="g0").uuid
    top = domblklist(vm.name, inactive=True)["vda"]
    sh("qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {DATA_MIB}M", top)
    g1 = engine.create(vm=vm.name, name="g1").uuid
    for target, path in domblklist(vm.name, inactive=True).items():
        sh("qemu-io", "-f", "qcow2", "-c", f"write -P 0x{0x60 + len(target):x} 1M 1M", path)
    return [g0, g1]


def _json(done: subprocess.CompletedProcess[str]) -> Any:
    """A command's JSON document (its stderr in the failure, should there be none)."""
    assert done.stdout.strip(), (done.returncode, done.stderr)
    return json.loads(done.stdout)


def _save_views(engine: Engine, vm: LabVm, keep: str, dest: Path) -> dict[str, Path]:
    """The current data of each disk, and what group `keep` holds, as standalone files."""
    dest.mkdir()
    views = {
        f"now-{t}": export(p, dest / f"now-{t}.qcow2")
        for t, p in domblklist(vm.name, inactive=True).items()
    }
    for ref in engine.get(keep).refs:
        views[ref.volume_snapshot_uuid] = export(ref.install_path, dest / f"{ref.device_id}.qcow2")
    return views


def _assert_views(engine: Engine, vm: LabVm, keep: str, views: dict[str, Path]) -> None:
    for t, path in domblklist(vm.name, inactive=True).items():
        assert same(views[f"now-{t}"], path), f"current data of {t} changed"
    for ref in engine.get(keep).refs:
        assert same(views[ref.volume_snapshot_uuid], ref.install_path), ref


def _writing(engine: Engine) -> list[str]:
    """The files the interrupted delete's journal says a commit began writing."""
    (op,) = [op for op in engine.operations() if op.state == "running"]
    plan: dict[str, str] = json.loads(op.plan)
    return [path for key, path in plan.items() if key.startswith("writing:")]


def _kill_at_random_moment(db: str, group: str) -> tuple[int, str]:
    """Start the delete, wait for its `qemu-img commit`, SIGKILL the delete a random
    moment later (the commit dies with it). The delete's exit status and output."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "snapgroup", "--db", db, "--json", "delete", group],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    while proc.poll() is None and not _commit_running(proc.pid):
        time.sleep(0.005)
    time.sleep(_RANDOM.uniform(0.0, 0.8))
    proc.send_signal(signal.SIGKILL)
    out = proc.communicate()[0]
    return proc.returncode, out


def _commit_running(pid: int) -> bool:
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
            for child in children:
                if b"commit" in Path(f"/proc/{child}/cmdline").read_bytes():
                    return True
        except OSError:
            continue
    return False


KILLS = [
    "delete:merge",  # the commit about to start: the leak is made by hand (exactly)
    *(f"delete:merging@{_RANDOM.randint(2, 40)}" for _ in range(2)),  # mid-commit
    "delete:committed",
    "random",
    "random",
]


@pytest.mark.parametrize("kill", KILLS, ids=[f"{k}-{i}" for i, k in enumerate(KILLS)])
def test_offline_delete_killed_mid_merge_leaves_every_file_clean(
    engine: Engine, big_vm: LabVm, kill: str, tmp_path: Path
) -> None:
    vm = big_vm
    g0, g1 = _two_groups(engine, vm)
    views = _save_views(engine, vm, g1, tmp_path / "views")
    db = engine.db.url

    if kill == "random":
        status, out = _kill_at_random_moment(db, g0)
    else:
        done = snapgroup(db, "delete", g0, fault=kill)
        status, out = done.returncode, done.stdout + done.stderr
        assert status == -signal.SIGKILL, out
    running = [op for op in engine.operations() if op.state == "running"]
    if status == -signal.SIGKILL and not running:
        # A random kill that came after the delete's journal closed (on its way out):
        # nothing is left to recover, the delete is done.
        assert kill == "random", out
        assert [op.state for op in engine.operations() if op.kind == "delete"][:1] == ["done"]
        assert _json(snapgroup(db, "recover"))["inventories"] == []
    elif status == -signal.SIGKILL:
        written = _writing(engine)
        leaked = {p: check(p, shared=True)[0] == 3 for p in written}  # the commit dies too
        if kill == "delete:merge":
            for path in written:
                leak_a_cluster(path)
        print(f"{kill}: killed; leaks before recover: {leaked}")
        recovered = snapgroup(db, "recover")
        assert recovered.returncode == 0, recovered.stdout + recovered.stderr
        (op,) = _json(recovered)["inventories"]
        assert op["state"] == "done", op
    else:
        assert status == 0, out  # the delete finished before the random moment came

    assert [g.uuid for g in engine.list_groups()] == [g1]
    for file in sorted(vm.directory.glob("*.qcow2")):
        code, report = check(file)
        assert code == 0 and "leaks" not in report, (file, report)
    _assert_views(engine, vm, g1, views)
    verified = snapgroup(db, "verify")
    assert (verified.returncode, _json(verified)) == (0, {"differences": []})


def test_a_leak_in_a_running_vms_file_is_a_warning_until_it_can_be_freed(
    engine: Engine, big_vm: LabVm, tmp_path: Path
) -> None:
    vm = big_vm
    g0, g1 = _two_groups(engine, vm)
    views = _save_views(engine, vm, g1, tmp_path / "views")
    db = engine.db.url
    assert snapgroup(db, "delete", g0, fault="delete:merge").returncode == -signal.SIGKILL
    (base,) = [p for p in _writing(engine) if p == str(vm.disks[0])]
    leak_a_cluster(base)
    vm.start()  # before anyone ran recover: the merge is finished live, by QEMU

    recovered = snapgroup(db, "recover")
    (op,) = _json(recovered)["inventories"]
    assert op["state"] == "done"
    assert "1 leaked cluster" in op["detail"] and "in use" in op["detail"], op
    assert check(base, shared=True)[0] == 3  # left alone: QEMU has it open

    for args in (["verify"], ["verify", "--repair"]):
        verified = snapgroup(db, *args)
        assert verified.returncode == 0, verified.stdout  # a warning, not a failure
        (diff,) = _json(verified)["differences"]
        assert (diff["kind"], diff["severity"], diff["repaired"]) == (
            "image-leaks",
            "warning",
            False,
        )
        assert base in diff["detail"] and "running" in diff["detail"]

    vm.stop()
    repaired = snapgroup(db, "verify", "--repair")
    assert repaired.returncode == 0
    (diff,) = _json(repaired)["differences"]
    assert (diff["kind"], diff["repaired"]) == ("image-leaks", True)
    for path in vm.directory.glob("*.qcow2"):
        assert check(path)[0] == 0, path
    assert _json(snapgroup(db, "verify")) == {"differences": []}
    _assert_views(engine, vm, g1, views)
