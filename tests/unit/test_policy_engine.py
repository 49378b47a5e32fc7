"""Snapshot policies wired to the engine (fakes): marks recorded with the group, the
pass creating and pruning through the real create and delete, protection refusing a
delete, the delete's plan (dry-run) being the plan the delete runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from snapgroup.domain.errors import OperationError
from snapgroup.domain.retention import Policy, Retention
from snapgroup.testing.fakes import lab_domain
from tests.unit.conftest import Lab

T0 = datetime(2026, 12, 1, 10, 30, tzinfo=UTC)


def _at(lab: Lab, moment: datetime) -> None:
    lab.engine.clock = lambda: moment


def test_pass_marks_creates_prunes_and_spares_hand_made_and_protected(lab: Lab) -> None:
    lab_domain(lab.hv)
    lab.engine.set_policy(Policy("p1", Retention(hourly=2), vms=("vm1",)))
    _at(lab, T0 - timedelta(minutes=5))
    by_hand = lab.engine.create(vm="vm1", name="by-hand")
    taken = []
    for hour in range(5):
        now = T0 + timedelta(hours=hour)
        _at(lab, now)
        report = lab.engine.autosnap(now=now, wait=0, parallel=1)
        assert report.exit_status == 0, report.to_json()
        entry = report.vms[0]
        assert entry.taken is not None and entry.taken.name == f"auto-hourly-{now:%Y-%m-%dT%H:%MZ}"
        taken.append(entry.taken.uuid)
        if hour == 1:
            lab.engine.protect(entry.taken.uuid)
    names = {g.uuid: g for g in lab.engine.list_groups(vm="vm1")}
    # hourly 2 keeps the two newest; the protected one (hour 1) and the hand-made stay
    assert set(names) == {by_hand.uuid, taken[1], taken[3], taken[4]}
    assert names[taken[4]].policy == ("p1",) and names[taken[4]].policy_label == "hourly"
    inv = names[taken[1]].to_inventory()
    assert (inv["protected"], inv["policy"], inv["policyLabel"]) == (True, ["p1"], "hourly")
    assert names[by_hand.uuid].to_inventory()["policy"] is None
    # a pass with nothing due takes nothing and prunes nothing
    report = lab.engine.autosnap(now=T0 + timedelta(hours=4, minutes=20), wait=0, parallel=1)
    assert report.vms[0].taken is None and report.vms[0].pruned == []


def test_protected_group_refuses_delete_and_delete_snapshot(lab: Lab) -> None:
    lab_domain(lab.hv)
    group = lab.engine.create(vm="vm1", name="keep")
    lab.engine.protect(group.uuid)
    with pytest.raises(OperationError, match=r"is protected; unprotect it first") as raised:
        lab.engine.delete(group.uuid)
    assert raised.value.code == "SYS.1006"
    with pytest.raises(OperationError, match="protected"):
        lab.engine.delete(group.uuid, mode="Enforcing")
    with pytest.raises(OperationError, match="protected"):
        lab.engine.delete_snapshot(group.refs[0].volume_snapshot_uuid)
    plan = lab.engine.delete_plan(group.uuid)
    assert plan.refused() and "protected" in plan.problems()[0]
    assert lab.engine.get(group.uuid).protected
    lab.engine.protect(group.uuid, protected=False)
    assert lab.engine.delete(group.uuid).error is None


def test_delete_plan_is_what_delete_runs_and_touches_nothing(lab: Lab) -> None:
    lab_domain(lab.hv)
    first = lab.engine.create(vm="vm1", name="first")
    lab.engine.create(vm="vm1", name="second")
    before = {p: dict(i.clusters) for p, i in lab.images.images.items()}
    plan = lab.engine.delete_plan(first.uuid)
    doc = plan.to_json()
    assert {p: dict(i.clusters) for p, i in lab.images.images.items()} == before
    assert not doc["wouldRefuse"] and doc["live"] is True and len(doc["disks"]) == 3
    for disk in doc["disks"]:
        assert disk["mergeInto"] == next(
            r.install_path for r in first.refs if r.volume_snapshot_uuid == disk["snapshotUuid"]
        )
        assert disk["mergeFrom"] and disk["bytes"] > 0 and disk["refused"] is None
    assert doc["space"] and all(s["fits"] for s in doc["space"])
    lab.images.free = 0  # no room: the plan says so, and the delete refuses for it
    doc = lab.engine.delete_plan(first.uuid).to_json()
    assert doc["wouldRefuse"] and not doc["space"][0]["fits"]
    assert all("free" in d["refused"] for d in doc["disks"])
    with pytest.raises(OperationError, match="0 free"):
        lab.engine.delete(first.uuid)


def test_dry_run_pass_changes_nothing_and_shows_the_delete_plans(lab: Lab) -> None:
    lab_domain(lab.hv)
    lab.engine.set_policy(Policy("p1", Retention(hourly=1), vms=("vm1",)))
    for hour in range(2):
        _at(lab, T0 + timedelta(hours=hour))
        lab.engine.autosnap(wait=0, parallel=1)
    count = len(lab.engine.list_groups(vm="vm1"))
    now = T0 + timedelta(hours=2)
    report = lab.engine.autosnap(now=now, wait=0, dry_run=True, parallel=1)
    entry = report.vms[0]
    assert entry.taken is not None and len(entry.pruned) == 1
    assert entry.prune_plans[0]["groupUuid"] == entry.pruned[0].uuid
    assert len(lab.engine.list_groups(vm="vm1")) == count


def test_policy_status_and_missing_vm(lab: Lab) -> None:
    lab_domain(lab.hv)
    lab.engine.set_policy(Policy("p1", Retention(hourly=2), vms=("vm1", "ghost")))
    _at(lab, T0)
    lab.engine.autosnap(wait=0, parallel=1)
    status = lab.engine.policy_status(now=T0 + timedelta(minutes=40))
    states = {v.vm_name: v.state for v in status.vms}
    assert states == {"vm1": "OK", "ghost": "CRIT"} and status.exit_status == 2
    lab.engine.set_policy(Policy("p1", Retention(hourly=2), vms=("vm1",)))
    assert lab.engine.policy_status(now=T0 + timedelta(minutes=40)).exit_status == 0
    assert lab.engine.policy_status(now=T0 + timedelta(minutes=100)).state == "WARN"
    assert lab.engine.policy_status(now=T0 + timedelta(minutes=150)).exit_status == 2


def test_a_group_a_clone_reads_is_never_pruned(lab: Lab) -> None:
    lab_domain(lab.hv)
    lab.engine.set_policy(Policy("p1", Retention(hourly=1), vms=("vm1",)))
    _at(lab, T0)
    first = lab.engine.autosnap(wait=0, parallel=1).vms[0].taken
    assert first is not None
    lab.engine.clone(first.uuid, name="copy")
    for hour in (1, 2):
        _at(lab, T0 + timedelta(hours=hour))
        report = lab.engine.autosnap(wait=0, parallel=1)
        assert report.exit_status == 0, report.to_json()
    names = [g.uuid for g in lab.engine.list_groups(vm="vm1")]
    assert first.uuid in names and len(names) == 2  # the clone's, and the newest
