"""`snapgroup hosts --retire HOST`: a host down for good, whose lease expired while its
last report had its VM running, keeps a stopped copy of the VM on another host from
being taken over; retired, it no longer does. Refused while its lease is live or its
report names VMs it owns running (unless --force), for itself, and for a host that is
not known; journaled; the requests queued for it fail. Two engines on one store
(tests/unit/test_takeover.py's cluster), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from snapgroup.domain.models import VmState
from snapgroup.ops.notices import collecting
from snapgroup.store.db import Database
from snapgroup.store.hosts import HostRepo
from snapgroup.store.jobs import JobStore
from snapgroup.store.queue import QueuedRequest, RequestQueue
from tests.unit.test_takeover import VM, Cluster, _cli
from tests.unit.test_takeover import cluster as cluster


def _dead_a_ran_it(cluster: Cluster) -> str:
    """a took a group, its last report has the VM running, and it died; the VM is
    defined on b, stopped. The group's uuid."""
    group = cluster.a.engine.create(vm="vm1", name="on-a")
    cluster.migrate(state=VmState.STOPPED)
    cluster.clock.advance(61)
    return group.uuid


def test_a_retired_host_s_stopped_vm_is_taken_over_by_the_host_that_defines_it(
    cluster: Cluster,
) -> None:
    a, b = cluster.a, cluster.b
    group = _dead_a_ran_it(cluster)
    code, _, err = _cli(b, "delete", group)
    assert code != 0 and "start the VM here to take it over" in err
    code, out, err = _cli(b, "hosts", "--retire", "host-a")
    assert code == 1 and out == ""
    assert err.startswith("error SYS.1006: host host-a runs VMs by its last report (")
    assert f"): {VM}; start them on the host that defines them now" in err
    code, out, err = _cli(b, "hosts", "--retire", "host-a", "--force")
    assert (code, err) == (0, "")
    assert out == f"retired host host-a (it owned {VM})\n"
    (retire,) = [op for op in b.engine.operations() if op.kind == "retire"]
    assert (retire.vm_uuid, retire.host, retire.state) == (VM, "host-b", "done")
    assert retire.detail == "host host-a retired by host host-b (--force)"
    assert json.loads(retire.plan or "{}") == {"host": "host-a", "running": [VM]}
    code, out, _ = _cli(b, "--json", "hosts")
    hosts = {h["name"]: h for h in json.loads(out)["inventories"]}
    assert hosts["host-a"]["retired"] is not None and hosts["host-a"]["live"] is False
    code, out, _ = _cli(b, "hosts")
    assert out.splitlines()[1].split()[:2] == ["host-a", "retired"], out
    # The stopped VM defined on b is b's now: said, then operated on.
    with collecting() as warnings:
        report = b.engine.delete(group)
    assert report.error is None and [g.name for g in b.engine.list_groups()] == []
    (said,) = warnings
    assert said.startswith(f"VM {VM} taken over from host host-a: host host-a was retired at ")
    assert a.engine.host == "host-a"


def test_a_host_whose_report_has_none_of_its_vms_running_retires_without_force(
    cluster: Cluster,
) -> None:
    cluster.a.engine.create(vm="vm1", name="on-a")
    cluster.migrate(state=VmState.STOPPED)
    cluster.a.engine.heartbeat()  # its last report: nothing runs there
    cluster.clock.advance(61)
    code, out, err = _cli(cluster.b, "--json", "hosts", "--retire", "host-a")
    assert code == 0, err
    assert json.loads(out) == {"host": "host-a", "vmInstanceUuids": [VM], "failedJobs": []}


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--retire", "host-a"], "SYS.1006", "host host-a's lease is live until "),
        (["--retire", "host-b"], "SYS.1007", "host host-b is this host: a host retires another"),
        (["--retire", "host-z"], "SYS.1003", "no host host-z in the store"),
        (["--force"], "SYS.1007", "--force goes with --retire HOST"),
    ],
)
def test_retire_is_refused(cluster: Cluster, argv: list[str], code: str, message: str) -> None:
    cluster.a.engine.create(vm="vm1", name="on-a")  # a's lease live
    exit_code, out, err = _cli(cluster.b, "hosts", *argv)
    assert (exit_code, out) == (1, "") and err.startswith(f"error {code}: {message}"), err
    assert [op for op in cluster.b.engine.operations() if op.kind == "retire"] == []


def test_the_requests_queued_for_a_retired_host_fail(cluster: Cluster, shared: Database) -> None:
    _dead_a_ran_it(cluster)
    queued = QueuedRequest("f" * 32, "create", "host-a", "POST", "/x", "", "{}", "0" * 32)
    assert RequestQueue(shared).put(queued, state="Waiting", now=cluster.clock())
    assert {h.name: h.queued for h in cluster.b.engine.hosts()} == {"host-a": 1, "host-b": 0}
    retired = cluster.b.engine.retire_host("host-a", force=True)
    assert retired.failed_jobs == ("f" * 32,)
    record = JobStore(shared).get("f" * 32)
    assert record is not None and (record.state, record.status) == ("Done", 503)
    assert "host host-a was retired" in record.document["error"]["details"]
    assert RequestQueue(shared).waiting() == {}
    assert {h.name: h.queued for h in cluster.b.engine.hosts()} == {"host-a": 0, "host-b": 0}


def test_a_retired_host_that_runs_again_is_retired_no_more(
    cluster: Cluster, shared: Database
) -> None:
    _dead_a_ran_it(cluster)
    cluster.b.engine.retire_host("host-a", force=True)
    cluster.clock.advance(1)
    cluster.a.engine.heartbeat()
    with shared.transaction() as session:
        lease = HostRepo(session).lease("host-a")
    assert lease is not None and lease.retired is None
    assert lease.live(cluster.clock() + timedelta(seconds=1))
