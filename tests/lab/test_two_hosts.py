"""Two hosts on one machine, one PostgreSQL store, one shared storage directory: host a
is the system libvirtd (qemu:///system), host b root's session libvirtd
(qemu:///session), a second, independent libvirt with its own domains and its own QEMU
processes. A VM moves from a to b by a stop on a and a start on b over the same disk
files (libvirt refuses a live migration between two daemons of one machine: they share
its host UUID). What is simulated: the hosts' names (SNAPGROUP_HOST) and the network
between them (none: one machine)."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapgroup.adapters.libvirt_hv import LibvirtHypervisor
from snapgroup.adapters.qemu_img import QemuImg
from snapgroup.api import Engine
from snapgroup.domain.errors import OperationError
from snapgroup.store.db import Database
from snapgroup.store.hosts import HostRepo
from snapgroup.testing.labvm import LabVm, create_lab_vm, lab_directory
from tests.lab.tools import sh
from tests.pgtools import empty_all_tables

pytestmark = pytest.mark.lab

SYSTEM, SESSION = "qemu:///system", "qemu:///session"
ROOT = Path(__file__).resolve().parents[2]
LEASE = 3.0  # seconds: a host's lease, short for the test


@pytest.fixture
def store(pg_store: Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[Database]:
    monkeypatch.setenv("SNAPGROUP_LEASE_SECONDS", str(LEASE))
    yield pg_store
    empty_all_tables(pg_store)


@pytest.fixture
def vm() -> Iterator[LabVm]:
    name = f"sg-lab-2h-{uuid.uuid4().hex[:8]}"
    made = create_lab_vm(lab_directory(name), name=name, start=True, uri=SYSTEM)
    try:
        yield made
    finally:
        for uri in (SESSION, SYSTEM):  # wherever it is now
            sh("virsh", "-c", uri, "destroy", name, check=False)
            sh("virsh", "-c", uri, "undefine", name, check=False)
        made.destroy()


def _host(store: Database, uri: str, name: str, *, wait: float = 0.0) -> Engine:
    return Engine(
        hypervisor=LibvirtHypervisor(uri), images=QemuImg(), db=store, host=name, lock_wait=wait
    )


def _move_to_session(vm: LabVm) -> None:
    """A stop on host a, a start on host b: the same definition (its disks on the
    overlays a's groups made), over the same files."""
    xml = sh("virsh", "-c", SYSTEM, "dumpxml", "--inactive", vm.name).stdout
    sh("virsh", "-c", SYSTEM, "destroy", vm.name)
    sh("virsh", "-c", SYSTEM, "undefine", vm.name)
    domain = ET.fromstring(xml)
    for label in domain.findall("seclabel"):  # the system daemon's; b sets its own
        domain.remove(label)
    definition = vm.directory / "on-b.xml"
    definition.write_text(ET.tostring(domain, encoding="unicode"))
    sh("virsh", "-c", SESSION, "define", str(definition))
    sh("virsh", "-c", SESSION, "start", vm.name)


def _digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_a_vm_stopped_on_a_and_started_on_b_keeps_its_groups_on_b(
    store: Database, vm: LabVm, tmp_path: Path
) -> None:
    a = _host(store, SYSTEM, "hosta")
    g1 = a.create(vm=vm.name, name="on-a")
    frozen = {r.install_path: _digest(r.install_path) for r in g1.refs}
    _move_to_session(vm)
    # b waits out a's lease (a's last report had the VM running), then takes it over.
    b = _host(store, SESSION, "hostb", wait=30 * LEASE)
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
    # b operates: delete, export, revert (its QEMU stopped and started by b's libvirt).
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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_b_takes_over_once_the_lease_of_as_killed_server_runs_out(
    store: Database, vm: LabVm, pg_url: str
) -> None:
    a = _host(store, SYSTEM, "hosta")
    a.create(vm=vm.name, name="on-a")
    env = {**os.environ, "SNAPGROUP_HOST": "hosta", "SNAPGROUP_NO_DAEMON": "1"}
    serve = subprocess.Popen(
        [sys.executable, "-m", "snapgroup", "--db", pg_url, "serve", "--listen",
         f"127.0.0.1:{_free_port()}"],
        cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:  # serving: its address is in the registry
            with store.transaction() as session:
                lease = HostRepo(session).lease("hosta")
            if lease is not None and lease.address is not None:
                break
            assert serve.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.1)
        assert lease.runs(vm.uuid)
        serve.send_signal(signal.SIGKILL)  # host a's server dies, its lease with it
        serve.wait()
        _move_to_session(vm)
        b = _host(store, SESSION, "hostb", wait=30 * LEASE)
        b.create(vm=vm.name, name="on-b")
        with store.transaction() as session:
            hosta = HostRepo(session).lease("hosta")
        assert hosta is not None and hosta.address is not None  # killed: never erased
        assert {g.name for g in b.list_groups(vm=vm.name)} == {"on-a", "on-b"}
    finally:
        serve.kill()
        serve.wait()
