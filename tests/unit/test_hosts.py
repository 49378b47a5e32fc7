"""Many hosts, one store: each row of a VM's files names its host, and a host operates
on its own VMs only (SYS.1006 otherwise). Two engines with different host names share
one Database here, each with its own (fake) libvirt; on SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from snapgroup.api import Engine
from snapgroup.domain.errors import OperationError
from snapgroup.store.db import Database
from snapgroup.store.repo import Repo
from snapgroup.testing.fakes import FakeHypervisor, FakeImageTool, lab_domain

VM_A, VM_B = "a" * 32, "b" * 32


@dataclass
class Host:
    engine: Engine
    hv: FakeHypervisor


def _host(db: Database, name: str, vm_uuid: str, vm_name: str, directory: Path) -> Host:
    images = FakeImageTool()
    hv = FakeHypervisor(images)
    # A real (empty) directory: verify looks there for stray overlays.
    (directory / name).mkdir(exist_ok=True)
    lab_domain(hv, uuid=vm_uuid, name=vm_name, directory=str(directory / name))
    return Host(Engine(hypervisor=hv, images=images, db=db, host=name), hv)


@pytest.fixture
def hosts(store: Database, tmp_path: Path) -> tuple[Host, Host]:
    a = _host(store, "host-a", VM_A, "vm-a", tmp_path)
    return a, _host(store, "host-b", VM_B, "vm-b", tmp_path)


def test_rows_name_their_host(hosts: tuple[Host, Host]) -> None:
    a, b = hosts
    group_a = a.engine.create(vm="vm-a", name="ga")
    b.engine.create(vm="vm-b", name="gb")
    with a.engine.db.transaction() as session:
        repo = Repo(session)
        assert {v.host for v in repo.volumes_of_vm(VM_A)} == {"host-a"}
        assert {v.host for v in repo.volumes_of_vm(VM_B)} == {"host-b"}
        row = repo.group(group_a.uuid)
        assert row is not None and row.host == "host-a"
        assert repo.vm_uuids(host="host-a") == {VM_A}
    # One catalogue: every host sees every group.
    assert {g.name for g in b.engine.list_groups()} == {"ga", "gb"}


def test_a_host_does_not_operate_on_another_hosts_vm(hosts: tuple[Host, Host]) -> None:
    a, b = hosts
    group = a.engine.create(vm="vm-a", name="ga")
    root = group.refs[0].volume_uuid
    for attempt in (
        lambda: b.engine.delete(group.uuid, mode="Enforcing"),
        lambda: b.engine.update(group.uuid, name="mine"),
        lambda: b.engine.create(root_volume_uuid=root, name="x"),
        lambda: b.engine.ungroup(group.uuid),
        lambda: b.engine.revert(group.uuid),
        lambda: b.engine.check([group.uuid]),
    ):
        with pytest.raises(OperationError, match="belongs to host host-a"):
            attempt()
    assert [g.uuid for g in a.engine.list_groups()] == [group.uuid]
    assert a.engine.get(group.uuid).name == "ga"
    # Host b's libvirt was at most asked whether it has the VM, and which VMs run there
    # (its lease's report); never to change a thing.
    assert {name for name, _ in b.hv.calls} <= {"lookup", "list_vms"}


def test_the_same_vm_seen_by_two_hosts_is_refused(store: Database, tmp_path: Path) -> None:
    a = _host(store, "host-a", VM_A, "vm-a", tmp_path)
    a.engine.create(vm="vm-a", name="ga")
    twin = _host(store, "host-b", VM_A, "vm-a", tmp_path)  # same UUID defined on host b
    with pytest.raises(OperationError, match="belongs to host host-a"):
        twin.engine.volumes("vm-a")


def test_sync_verify_and_recover_keep_to_their_host(hosts: tuple[Host, Host]) -> None:
    a, b = hosts
    a.engine.create(vm="vm-a", name="ga")
    b.engine.create(vm="vm-b", name="gb")
    # Host b's VM is not in host a's libvirt: host a must not take it for gone.
    assert a.engine.sync() == []
    assert [d.vm_uuid for d in a.engine.verify(repair=True)] == []
    with b.engine.db.transaction() as session:
        assert all(v.attached for v in Repo(session).volumes_of_vm(VM_B))
    assert a.engine.recover() == [] and b.engine.recover() == []


def test_rows_from_before_hosts_are_claimed_by_the_host_that_sees_the_vm(
    store: Database, tmp_path: Path
) -> None:
    a = _host(store, "host-a", VM_A, "vm-a", tmp_path)
    a.engine.volumes("vm-a")
    with store.transaction() as session:  # as a store made before the host column
        repo = Repo(session)
        for volume in repo.volumes_of_vm(VM_A):
            volume.host = None
            repo.add(volume)
    a.engine.volumes("vm-a")
    with store.transaction() as session:
        assert {v.host for v in Repo(session).volumes_of_vm(VM_A)} == {"host-a"}


def test_the_host_name_comes_from_the_environment(
    store: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SNAPGROUP_HOST", "from-env")
    images = FakeImageTool()
    engine = Engine(hypervisor=FakeHypervisor(images), images=images, db=store)
    assert engine.host == engine.journal.host == "from-env"
