"""A create reads each thing once and writes by primary key (bench 6): what those
shortcuts could silently lose. Journal steps still record step, time and plan, each in
its own commit; the group's record moves every volume's top; a create refused after
its sync keeps what the sync recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from snapgroup.domain.errors import InvalidArgument
from snapgroup.domain.models import DomainDisk, VmState
from snapgroup.ops.journal import DONE, RUNNING, Journal
from snapgroup.ops.syncing import synced
from snapgroup.store.db import Database
from snapgroup.store.operations import OperationRepo
from snapgroup.store.repo import Repo
from snapgroup.store.snapshots import _chain_exit
from snapgroup.testing.fakes import lab_domain
from tests.unit.conftest import Lab

VM = "a" * 32


def _op(lab: Lab, uuid: str) -> tuple[str, str, str | None, dict[str, object], object]:
    with lab.engine.db.transaction() as session:
        row = OperationRepo(session).get(uuid)
        assert row is not None
        return row.step, row.state, row.detail, json.loads(row.plan), row.updated


def test_a_step_written_by_primary_key_records_its_step_time_and_plan(lab: Lab) -> None:
    journal = lab.engine.journal
    op = journal.begin("create", VM, {"overlays": ["x"], "live": True}, group_uuid="g" * 32)
    _, _, _, _, begun = _op(lab, op)
    journal.step(op, "create", "overlays")
    step, state, _, plan, updated = _op(lab, op)
    assert (step, state, plan) == ("overlays", RUNNING, {"overlays": ["x"], "live": True})
    assert updated > begun  # type: ignore[operator]
    journal.step(op, "create", "switched", consistency={"type": "Crash"})
    step, _, _, plan, _ = _op(lab, op)
    assert step == "switched"
    assert plan == {"overlays": ["x"], "live": True, "consistency": {"type": "Crash"}}
    journal.step(op, "create", "thawed", live=False)  # merged into what is there now
    assert _op(lab, op)[3] == {"overlays": ["x"], "live": False, "consistency": {"type": "Crash"}}


def test_close_in_a_session_holding_the_row_shows_the_new_state(lab: Lab) -> None:
    journal = lab.engine.journal
    op = journal.begin("create", VM, {})
    with lab.engine.db.transaction() as session:
        loaded = OperationRepo(session).get(op)
        assert loaded is not None and loaded.state == RUNNING
        journal.close(op, DONE, detail="fine", session=session)
        assert (loaded.state, loaded.detail) == (DONE, "fine")  # not the stale copy
    assert _op(lab, op)[1:3] == (DONE, "fine")


def test_a_step_of_an_unknown_operation_fails_and_writes_nothing(lab: Lab) -> None:
    with pytest.raises(AssertionError):
        lab.engine.journal.step("f" * 32, "create", "overlays")


def test_each_step_is_its_own_commit(lab: Lab, tmp_path: Path) -> None:
    """Recovery reads the step a killed process reached: another connection sees it."""
    url = lab.engine.db.url
    if url == "sqlite://":  # in memory: no other connection could look
        url = f"sqlite:///{tmp_path / 'store.db'}"
    mine, other = Database(url), Database(url)
    try:
        journal = Journal(mine, lab.engine.clock, lab.engine.new_uuid, host="h1")
        op = journal.begin("create", VM, {})
        journal.step(op, "create", "overlays")
        with other.transaction() as session:
            row = OperationRepo(session).get(op)
            assert row is not None and row.step == "overlays"
    finally:
        mine.dispose()
        other.dispose()


def test_recording_a_group_moves_every_volume_onto_its_overlay(lab: Lab) -> None:
    lab_domain(lab.hv)
    first = lab.engine.create(vm="vm1", name="g1")
    second = lab.engine.create(vm="vm1", name="g2")
    disks = {d.target: d.path for d in lab.hv.domains[VM].disks}
    with lab.engine.db.transaction() as session:
        volumes = Repo(session).volumes_of_vm(VM)
    by_volume = {r.volume_uuid: r for r in second.refs}
    for v in volumes:
        assert v.install_path == disks[v.target]  # the overlay the disk is on now
        assert v.parent_snapshot_uuid == by_volume[v.uuid].volume_snapshot_uuid
    below = {r.volume_uuid: r.volume_snapshot_uuid for r in first.refs}
    with lab.engine.db.transaction() as session:
        repo = Repo(session)
        for r in second.refs:
            snapshot = repo.snapshot(r.volume_snapshot_uuid)
            assert snapshot is not None and snapshot.parent_uuid == below[r.volume_uuid]
    assert lab.engine.get(second.uuid) == second


def test_a_create_refused_after_its_sync_keeps_what_the_sync_recorded(lab: Lab) -> None:
    lab_domain(lab.hv)
    taken = lab.engine.create(vm="vm1", name="g1")
    lab.images.add("/lab/new.qcow2")
    lab.hv.domains[VM].disks.append(DomainDisk("vdz", "disk", "file", "/lab/new.qcow2", "qcow2"))
    with pytest.raises(InvalidArgument):
        lab.engine.create(vm="vm1", name="g2", resource_uuid=taken.uuid)
    with lab.engine.db.transaction() as session:
        paths = {v.install_path for v in Repo(session).volumes_of_vm(VM)}
    assert "/lab/new.qcow2" in paths  # the new disk was recorded as a volume


def test_a_create_on_a_stopped_vm_still_checks_chains(lab: Lab) -> None:
    lab_domain(lab.hv, state=VmState.STOPPED)
    lab.engine.create(vm="vm1", name="g1")
    group = lab.engine.create(vm="vm1", name="g2")
    assert len(group.refs) == 3


class _Link:
    def __init__(self, uuid: str, parent: str | None) -> None:
        self.uuid, self.install_path, self.parent_uuid = uuid, f"/{uuid}", parent


def test_chain_exit_finds_where_a_chain_leaves_and_ends_a_cycle() -> None:
    own = {"a": _Link("a", "b"), "b": _Link("b", "x")}
    assert _chain_exit("a", own) == "x"  # type: ignore[arg-type]
    assert _chain_exit(None, own) is None  # type: ignore[arg-type]
    assert _chain_exit("y", own) == "y"  # type: ignore[arg-type]
    own["b"] = _Link("b", None)
    assert _chain_exit("a", own) is None  # type: ignore[arg-type]
    own["b"] = _Link("b", "a")  # a cycle ends the walk, as an end would
    assert _chain_exit("a", own) is None  # type: ignore[arg-type]


def _counting_transactions(lab: Lab) -> list[int]:
    count = [0]
    db = lab.engine.db
    transaction = db.transaction

    def counted():  # type: ignore[no-untyped-def]
        count[0] += 1
        return transaction()

    db.transaction = counted  # type: ignore[method-assign]
    return count


def test_an_operations_sync_is_one_transaction_when_nothing_is_interrupted(lab: Lab) -> None:
    lab_domain(lab.hv)
    domain = lab.hv.lookup(VM)
    count = _counting_transactions(lab)
    with synced(lab.engine.ctx, domain) as (_repo, found):
        assert sorted(found.volumes) == ["vda", "vdb", "vdc"]
    assert count[0] == 1  # the journal's look and the sync: the same transaction


def test_an_operations_sync_finishes_a_dead_processs_operation_first(lab: Lab) -> None:
    paths = lab_domain(lab.hv)
    journal = lab.engine.journal
    overlay = "/lab/left.qcow2"
    lab.images.add(overlay, backing=paths[0])
    plan = {"overlays": [{"target": "vda", "current": paths[0], "overlay": overlay}]}
    op = journal.begin("create", VM, {**plan, "group_uuid": "b" * 32, "name": "g"})
    with lab.engine.db.transaction() as session:
        OperationRepo(session).update(op, {"pid": 1})  # not this process: it died
    with synced(lab.engine.ctx, lab.hv.lookup(VM)) as (_repo, found):
        assert found.volumes["vda"].install_path == paths[0]
    assert _op(lab, op)[1] == "rolled-back"
    assert not lab.images.exists(overlay)


def test_begin_writes_every_column_of_the_operation(lab: Lab) -> None:
    """Journal.begin inserts the row by its columns (no ORM object): read back whole."""
    import os

    op = lab.engine.journal.begin("create", VM, {"live": True}, group_uuid="g" * 32)
    with lab.engine.db.transaction() as session:
        row = OperationRepo(session).get(op)
        assert row is not None
        got = (row.kind, row.vm_uuid, row.group_uuid, row.state, row.step, row.detail)
        assert got == ("create", VM, "g" * 32, RUNNING, "begin", None)
        assert (row.host, row.pid, json.loads(row.plan)) == (
            lab.engine.host,
            os.getpid(),
            {"live": True},
        )
        assert row.started == row.updated
    assert [o.uuid for o in lab.engine.operations()] == [op]
