"""SIGKILL `snapgroup create --consistency application` at each step around the freeze of
the real lab guest, then `snapgroup recover`: the guest is thawed (the agent's
guest-fsfreeze-status says so), and the group is rolled back or kept, whole either way.

One guest serves every step (a boot costs 10-20 s under TCG): each case leaves it whole
for the next."""

from __future__ import annotations

import json
import shutil
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from lab.consistency import agent, booted_guest
from snapgroup.api import Engine, open_engine
from snapgroup.testing.labvm import LAB_ROOT, LabVm
from tests.lab.test_fault_recovery import assert_whole, snapgroup

pytestmark = pytest.mark.lab


@dataclass
class Frozen:
    vm: LabVm
    engine: Engine
    db: str


@pytest.fixture(scope="module")
def guest() -> Iterator[Frozen]:
    LAB_ROOT.mkdir(parents=True, exist_ok=True)
    work = LAB_ROOT / f"freeze-{uuid.uuid4().hex[:8]}"
    work.mkdir(mode=0o755)
    db = f"sqlite:///{work / 'snapgroup.db'}"
    engine = open_engine(connect="qemu:///system", db=db)
    try:
        with booted_guest(work) as booted:
            yield Frozen(booted.vm, engine, db)
    finally:
        engine.db.dispose()
        shutil.rmtree(work, ignore_errors=True)


# step -> (frozen when killed, the operation's end, the kept group's consistencyType)
CASES = {
    "create:freezing": (False, "rolled-back", None),  # journaled; the freeze not yet asked
    "create:frozen": (True, "rolled-back", None),  # frozen, not switched
    "create:thawing": (True, "done", "Crash"),  # switched while frozen: not proven
    "create:thawed": (False, "done", "Application"),
}


@pytest.mark.parametrize("step", list(CASES))
def test_killed_around_the_freeze_recover_thaws(guest: Frozen, step: str) -> None:
    frozen, state, kept = CASES[step]
    before = {g.uuid for g in guest.engine.list_groups()}
    name = f"g-{step.split(':')[1]}"

    create = ("create", "--vm", guest.vm.name, "--name", name, "--consistency", "application")
    killed = snapgroup(guest.db, *create, fault=step)
    assert killed.returncode == -signal.SIGKILL, (killed.stdout, killed.stderr)
    status = agent(guest.vm.name, "guest-fsfreeze-status")
    assert status == ("frozen" if frozen else "thawed"), (step, status)

    recovered = snapgroup(guest.db, "recover")
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    (op,) = json.loads(recovered.stdout)["inventories"]

    assert op["state"] == state
    assert agent(guest.vm.name, "guest-fsfreeze-status") == "thawed"
    groups = {g.uuid: g for g in guest.engine.list_groups()}
    new = [g for u, g in groups.items() if u not in before]
    if kept is None:
        assert new == []
    else:
        (group,) = new
        inventory = group.to_inventory()
        assert (inventory["name"], inventory["consistencyType"]) == (name, kept)
        if kept == "Crash":
            assert "interrupted inside the freeze window" in inventory["consistencyNote"]
        else:
            assert len(inventory["frozenFilesystems"]) == 3  # /mnt/sg-root, -data1, -data2
            print(json.dumps({k: inventory[k] for k in ("consistencyType", "freezeMillis")}))
    assert_whole(guest.engine, guest.vm, live=True)
