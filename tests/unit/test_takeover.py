"""Ownership follows the VM: two engines with different host names on one store, each
with its own (fake) libvirt over the same (fake) shared storage. A VM that moves from
host a to host b is taken over by b once a no longer runs it (a's report says so, or
a's lease expired), journaled and said; while both run it, both refuse it. On SQLite
and PostgreSQL."""

from __future__ import annotations

import io
import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from snapgroup.api import Engine
from snapgroup.cli.context import Context
from snapgroup.cli.main import main
from snapgroup.domain.errors import OperationError
from snapgroup.domain.models import VmState
from snapgroup.store.db import Database
from snapgroup.store.hosts import HostRepo
from snapgroup.store.repo import Repo
from snapgroup.testing.fakes import FakeHypervisor, FakeImageTool, lab_domain

VM = "a" * 32


class Clock:
    """One clock for both hosts (their clocks in step, as NTP keeps them)."""

    def __init__(self) -> None:
        self.now = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Host:
    name: str
    engine: Engine
    hv: FakeHypervisor


@dataclass
class Cluster:
    a: Host
    b: Host
    clock: Clock
    images: FakeImageTool

    def migrate(self, *, state: VmState = VmState.RUNNING, keep_source: bool = False) -> None:
        """The VM leaves a for b, on the same disk files (shared storage); a keeps its
        definition, shut off, when `keep_source` (virsh migrate --persistent)."""
        domain = self.a.hv.domains[VM]
        self.b.hv.define(VM, domain.name, state, domain.disks)
        domain.state = VmState.STOPPED
        if not keep_source:
            self.a.hv.undefine(VM)


@pytest.fixture
def cluster(shared: Database) -> Cluster:
    store = shared
    images = FakeImageTool()  # one storage both hosts see
    clock = Clock()
    counter = iter(range(1, 1 << 20))

    def host(name: str) -> Host:
        hv = FakeHypervisor(images)
        engine = Engine(
            hypervisor=hv,
            images=images,
            db=store,
            host=name,
            clock=clock,
            new_uuid=lambda: f"{next(counter):032x}",
        )
        return Host(name, engine, hv)

    a, b = host("host-a"), host("host-b")
    lab_domain(a.hv, directory="/shared")
    return Cluster(a, b, clock, images)


def _owners(store: Database) -> set[str | None]:
    with store.transaction() as session:
        repo = Repo(session)
        return {v.host for v in repo.volumes_of_vm(VM)} | {g.host for g in repo.groups()}


def test_a_vm_that_moved_is_taken_over_once_its_owner_reports_it_gone(
    cluster: Cluster, shared: Database
) -> None:
    a, b = cluster.a, cluster.b
    group = a.engine.create(vm="vm1", name="on-a")
    before = [r.install_path for r in group.refs]
    cluster.migrate()  # a live migration: a's last report still has it running
    with pytest.raises(OperationError, match="running on two hosts, host-a") as err:
        b.engine.create(vm="vm1", name="on-b")
    assert "and this one (host-b)" in err.value.details
    cluster.clock.advance(25)
    a.engine.heartbeat()  # a's report: the VM no longer runs there
    taken = b.engine.create(vm="vm1", name="on-b")
    assert _owners(shared) == {"host-b"}
    # The groups taken on a read back exactly; b operates on them.
    assert [r.install_path for r in b.engine.get(group.uuid).refs] == before
    assert [g.name for g in b.engine.list_groups()] == ["on-a", "on-b"]
    b.engine.delete(group.uuid)
    assert [g.uuid for g in b.engine.list_groups()] == [taken.uuid]
    takeover = [op for op in b.engine.operations() if op.kind == "takeover"]
    assert len(takeover) == 1 and takeover[0].host == "host-b" and takeover[0].state == "done"
    assert takeover[0].detail is not None
    assert takeover[0].detail.startswith(f"VM {VM} taken over from host host-a: host host-a")
    # a refuses, and says whose it is now.
    with pytest.raises(OperationError, match="belongs to host host-b"):
        a.engine.delete(taken.uuid)


def test_the_old_owner_keeping_a_stopped_definition_is_refused_while_b_runs_it(
    cluster: Cluster,
) -> None:
    a, b = cluster.a, cluster.b
    group = a.engine.create(vm="vm1", name="on-a")
    cluster.migrate(keep_source=True)
    a.engine.heartbeat()
    b.engine.volumes("vm1")  # taken over
    with pytest.raises(OperationError, match="not to this host \\(host-a\\): it runs there"):
        a.engine.revert(group.uuid)
    b.engine.create(vm="vm1", name="on-b")  # a's definition is stale now
    with pytest.raises(OperationError, match="opens other disk files than the store records"):
        a.engine.revert(group.uuid)
    assert [d.state for d in a.hv.domains.values()] == [VmState.STOPPED]


def test_a_vm_whose_owner_died_is_taken_over_after_the_lease(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    group = a.engine.create(vm="vm1", name="on-a")
    cluster.migrate()  # a stopped with it: no more reports
    with pytest.raises(OperationError, match="running on two hosts"):
        b.engine.volumes("vm1")
    cluster.clock.advance(61)
    assert [v.volume_uuid for v in b.engine.volumes("vm1")] == [r.volume_uuid for r in group.refs]
    detail = next(op.detail for op in b.engine.operations() if op.kind == "takeover")
    assert detail is not None and "host host-a's lease expired at" in detail
    assert "the VM runs here" in detail


def test_a_dead_owner_that_ran_it_keeps_it_from_a_stopped_copy(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    group = a.engine.create(vm="vm1", name="on-a")
    cluster.migrate(state=VmState.STOPPED)
    cluster.clock.advance(61)
    with pytest.raises(OperationError, match="start the VM here to take it over"):
        b.engine.revert(group.uuid)
    b.hv.domains[VM].state = VmState.RUNNING  # started here: b's own now
    b.engine.create(vm="vm1", name="on-b")
    with b.engine.db.transaction() as session:
        lease = HostRepo(session).lease("host-b")
    assert lease is not None and lease.runs(VM)


def test_an_operation_the_old_owner_left_unfinished_moves_with_the_vm(
    cluster: Cluster, shared: Database
) -> None:
    a, b = cluster.a, cluster.b
    a.engine.create(vm="vm1", name="on-a")
    op = a.engine.journal.begin("create", VM, {"overlays": []})  # a died here
    cluster.migrate()
    cluster.clock.advance(61)
    b.engine.create(vm="vm1", name="on-b")
    rows = {row.uuid: row for row in b.engine.operations()}
    assert rows[op].host == "host-b" and rows[op].state != "running"
    assert a.engine.recover() == []


def test_hosts_lists_leases_and_vms(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    a.engine.create(vm="vm1", name="on-a")
    b.engine.heartbeat(address="http://host-b:8080/zstack")
    views = {v.name: v.to_dict() for v in b.engine.hosts()}
    assert views["host-a"]["vmInstanceUuids"] == [VM] and views["host-a"]["running"] == [VM]
    assert views["host-a"]["live"] is True
    assert views["host-b"]["address"] == "http://host-b:8080/zstack"
    assert views["host-b"]["vmInstanceUuids"] == []
    cluster.clock.advance(61)
    views = {v.name: v.to_dict() for v in b.engine.hosts()}
    assert views["host-a"]["live"] is False and views["host-b"]["live"] is True
    # A command beside the serving host keeps its address.
    assert views["host-b"]["address"] == "http://host-b:8080/zstack"


def test_wait_waits_for_a_migration_to_settle(cluster: Cluster) -> None:
    """--wait: a VM running on two hosts is looked at again until the old host's report
    no longer has it (here: a's heartbeat once b is waiting), then taken over."""
    a, b = cluster.a, cluster.b
    a.engine.create(vm="vm1", name="on-a")
    cluster.migrate()
    b.engine.lock_wait = 60.0
    looked = len(b.hv.called("lookup"))

    def old_host_reports() -> None:
        while len(b.hv.called("lookup")) < looked + 3:  # b is waiting: it looked again
            threading.Event().wait(0.01)
        a.engine.heartbeat()

    reporter = threading.Thread(target=old_host_reports)
    reporter.start()
    taken = b.engine.create(vm="vm1", name="on-b")
    reporter.join()
    assert taken.name == "on-b"
    assert any(op.kind == "takeover" for op in b.engine.operations())


def _cli(host: Host, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()

    def context(args: Any) -> Context:
        return Context(make_engine=lambda: host.engine, as_json=args.json)

    code = main(list(argv), out=out, err=err, context_factory=context)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("as_json", [False, True])
def test_the_command_that_takes_a_vm_over_says_so_in_its_result(
    cluster: Cluster, as_json: bool
) -> None:
    a, b = cluster.a, cluster.b
    a.engine.create(vm="vm1", name="on-a")
    cluster.migrate()
    cluster.clock.advance(61)  # a's lease expired
    json_flag = ["--json"] if as_json else []
    code, out, err = _cli(b, *json_flag, "create", "--vm", "vm1", "--name", "on-b")
    assert code == 0, err
    said = f"VM {VM} taken over from host host-a: host host-a's lease expired at "
    if as_json:
        document = json.loads(out)
        assert document["inventory"]["name"] == "on-b"  # ZStack's shape, and beside it:
        assert set(document) == {"inventory", "warnings"}
        assert len(document["warnings"]) == 1 and document["warnings"][0].startswith(said)
    else:
        assert "on-b" in out and "taken over" not in out
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"warning: {said}"), err
    # Said once: the next command on b has nothing to say.
    code, out, err = _cli(b, *json_flag, "list")
    assert code == 0 and "taken over" not in out + err
