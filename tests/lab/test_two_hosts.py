"""Two hosts on one machine, one PostgreSQL store, one shared storage directory: host a
is the system libvirtd, host b a second libvirtd in a mount namespace of its own (its own
configuration and host UUID, domains, QEMU processes: tests/lab/second_host.py), with
snapgroup's qemu hook installed. A VM moves from a to b by a live migration (`virsh
migrate --live --persistent --undefinesource`; `--unsafe`: libvirt takes a local
directory for unshared storage, though both daemons open the same files) or by a stop on
a and a start on b. What is simulated: the hosts' names (SNAPGROUP_HOST) and the network
between them (one machine: loopback)."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapgroup.adapters.libvirt_hv import LibvirtHypervisor
from snapgroup.adapters.qemu_img import QemuImg
from snapgroup.api import Engine, collect_warnings
from snapgroup.domain.errors import OperationError
from snapgroup.store.db import Database
from snapgroup.store.hosts import HostRepo
from snapgroup.testing.labvm import LabVm, create_lab_vm, lab_directory
from tests.lab.second_host import host_b, serving
from tests.lab.tools import sh
from tests.pgtools import empty_all_tables

pytestmark = pytest.mark.lab

A = "qemu:///system"
LEASE = 3.0  # seconds: a host's lease, short for the test


@pytest.fixture(scope="module")
def b_uri(pg_url: str) -> Iterator[str]:
    """Host b's libvirt, its qemu hook running this snapgroup on the test's store."""
    with host_b(pg_url) as uri:
        yield uri


@pytest.fixture
def store(pg_store: Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[Database]:
    monkeypatch.setenv("SNAPGROUP_LEASE_SECONDS", str(LEASE))
    yield pg_store
    empty_all_tables(pg_store)


@pytest.fixture
def vm(b_uri: str) -> Iterator[LabVm]:
    name = f"sg-lab-2h-{uuid.uuid4().hex[:8]}"
    made = create_lab_vm(lab_directory(name), name=name, start=True, uri=A)
    try:
        yield made
    finally:
        for uri in (b_uri, A):  # wherever it is now
            sh("virsh", "-c", uri, "destroy", name, check=False)
            sh("virsh", "-c", uri, "undefine", name, check=False)
        made.destroy()


def _host(store: Database, uri: str, name: str, *, wait: float = 0.0) -> Engine:
    return Engine(
        hypervisor=LibvirtHypervisor(uri), images=QemuImg(), db=store, host=name, lock_wait=wait
    )


def _migrate(vm: LabVm, b_uri: str) -> subprocess.CompletedProcess[str]:
    """A live migration from host a to host b, the definition moved with it."""
    return sh(
        "virsh", "-c", A, "migrate", "--live", "--unsafe", "--persistent",
        "--undefinesource", vm.name, b_uri, check=False,
    )  # fmt: skip


def _stop_and_start(vm: LabVm, b_uri: str, *, start: bool = True) -> None:
    """A stop on host a, a start on host b (`start`; else only defined there): the same
    definition (its disks on the overlays a's groups made), over the same files."""
    xml = sh("virsh", "-c", A, "dumpxml", "--inactive", vm.name).stdout
    sh("virsh", "-c", A, "destroy", vm.name)
    sh("virsh", "-c", A, "undefine", vm.name)
    domain = ET.fromstring(xml)
    for label in domain.findall("seclabel"):  # a's; b sets its own
        domain.remove(label)
    definition = vm.directory / "on-b.xml"
    definition.write_text(ET.tostring(domain, encoding="unicode"))
    sh("virsh", "-c", b_uri, "define", str(definition))
    if start:
        sh("virsh", "-c", b_uri, "start", vm.name)


def _digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.parametrize("move", ["live-migration", "stop-and-start"])
def test_a_vm_that_moved_from_a_to_b_keeps_its_groups_on_b(
    store: Database, vm: LabVm, b_uri: str, tmp_path: Path, move: str
) -> None:
    a = _host(store, A, "hosta")
    g1 = a.create(vm=vm.name, name="on-a")
    frozen = {r.install_path: _digest(r.install_path) for r in g1.refs}
    if move == "live-migration":
        done = _migrate(vm, b_uri)
        assert done.returncode == 0, done.stderr
    else:
        _stop_and_start(vm, b_uri)
    assert vm.name not in sh("virsh", "-c", A, "list", "--all", "--name").stdout.split()
    assert sh("virsh", "-c", b_uri, "domstate", vm.name).stdout.strip() == "running"
    # b waits out a's lease (a's last report had the VM running), then takes it over.
    b = _host(store, b_uri, "hostb", wait=30 * LEASE)
    g2 = b.create(vm=vm.name, name="on-b")
    takeover = next(op for op in b.operations() if op.kind == "takeover")
    assert takeover.detail is not None and "host hosta's lease expired" in takeover.detail
    assert "the VM runs here" in takeover.detail
    # The group taken on a reads back exactly, its files untouched.
    again = b.get(g1.uuid)
    assert [(r.volume_snapshot_uuid, r.install_path) for r in again.refs] == [
        (r.volume_snapshot_uuid, r.install_path) for r in g1.refs
    ]
    assert {p: _digest(p) for p in frozen} == frozen
    assert b.check([g1.uuid])[0].available
    # b operates: delete (a live merge in b's QEMU), export, revert.
    assert b.delete(g2.uuid).error is None
    repo = tmp_path / "repo"
    exported = b.export(g1.uuid, to=str(repo))
    assert exported.manifest.backup_id in {m.backup_id for m in b.backups(at=str(repo))}
    assert b.verify_backup(at=str(repo)).clean
    report = b.revert(g1.uuid, stop=True, stop_timeout=0)
    assert all(r.success for r in report.results)
    # a refuses, and says whose the VM is now.
    with pytest.raises(OperationError, match="belongs to host hostb, not to this host"):
        a.delete(g1.uuid)
    hosts = {h.name: h for h in b.hosts()}
    assert hosts["hostb"].vms == (vm.uuid,) and hosts["hosta"].vms == ()


def test_no_migration_while_an_operation_holds_the_vm(
    store: Database, vm: LabVm, b_uri: str
) -> None:
    """b's qemu hook refuses the incoming migration while a (another host: the lock is
    the store's) holds the VM; once it is free, the migration goes through."""
    a = _host(store, A, "hosta")
    a.create(vm=vm.name, name="on-a")
    with a.ctx.locks.vm(vm.uuid):  # an operation of host a on the VM
        refused = _migrate(vm, b_uri)
    assert refused.returncode != 0
    assert f"an operation holds VM {vm.name} ({vm.uuid})" in refused.stderr
    assert sh("virsh", "-c", A, "domstate", vm.name).stdout.strip() == "running"
    done = _migrate(vm, b_uri)
    assert done.returncode == 0, done.stderr


def test_b_takes_over_once_the_lease_of_as_killed_server_runs_out(
    store: Database, vm: LabVm, b_uri: str, pg_url: str, tmp_path: Path
) -> None:
    a = _host(store, A, "hosta")
    a.create(vm=vm.name, name="on-a")
    with serving(store, pg_url, "hosta", A, log=tmp_path / "serve-a.log") as serve:
        with store.transaction() as session:
            lease = HostRepo(session).lease("hosta")
        assert lease is not None and lease.runs(vm.uuid)
        serve.send_signal(signal.SIGKILL)  # host a's server dies, its lease with it
        serve.wait()
        done = _migrate(vm, b_uri)
        assert done.returncode == 0, done.stderr
        b = _host(store, b_uri, "hostb", wait=30 * LEASE)
        b.create(vm=vm.name, name="on-b")
        with store.transaction() as session:
            hosta = HostRepo(session).lease("hosta")
        assert hosta is not None and hosta.address is not None  # killed: never erased
        assert not hosta.live(b.clock())
        assert {g.name for g in b.list_groups(vm=vm.name)} == {"on-a", "on-b"}


def test_a_dead_host_retired_hands_its_stopped_vm_to_the_host_that_defines_it(
    store: Database, vm: LabVm, b_uri: str
) -> None:
    """a dies with the VM running by its last report; the VM is defined on b, stopped.
    b refuses it (a may be alive and silent) until an operator retires a; then b takes
    it over and reverts it (a stopped VM: no QEMU of b's on its disks)."""
    a = _host(store, A, "hosta")
    g1 = a.create(vm=vm.name, name="on-a")
    _stop_and_start(vm, b_uri, start=False)
    b = _host(store, b_uri, "hostb")
    time.sleep(LEASE + 0.5)  # a's lease runs out (not a timing assertion: a wait)
    with pytest.raises(OperationError, match="start the VM here to take it over"):
        b.revert(g1.uuid)
    with pytest.raises(OperationError, match="host hosta runs VMs by its last report"):
        b.retire_host("hosta")
    retired = b.retire_host("hosta", force=True)
    assert retired.vms == (vm.uuid,)
    with collect_warnings() as warnings:
        report = b.revert(g1.uuid)
    assert all(r.success for r in report.results)
    assert len(warnings) == 1 and "host hosta was retired at" in warnings[0]
    assert sh("virsh", "-c", b_uri, "domstate", vm.name).stdout.strip() == "shut off"
    assert {h.name: h.vms for h in b.hosts()}["hostb"] == (vm.uuid,)
