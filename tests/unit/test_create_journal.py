"""A create's journal commits what recovery needs and nothing more: its plan (every overlay
named, and what the group will record when that is known) before anything is made, the
"freezing" step before the agent is asked, the consistency record before the switch or
after the thaw, and its end with the group's rows (at step "switched"). A kill at any
point between them still ends as the uninterrupted create would have."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pytest_mock import MockerFixture

from snapgroup.ops.journal import Journal
from snapgroup.store.repo import Repo
from snapgroup.testing.fakes import lab_domain
from tests.unit.conftest import Killed, Lab

VM = "a" * 32
MOUNTS = ("/", "/mnt/data1")
FALLBACK = (
    "crash-consistent fallback: guest agent unavailable (argument unsupported: "
    "QEMU guest agent is not configured)"
)


def _spy(lab: Lab) -> list[tuple[str, Any]]:
    """The journal's writes and the switch, in order: ("begin", plan), ("step", (name,
    plan update)), ("close", state), ("switch", None)."""
    seen: list[tuple[str, Any]] = []
    journal: Journal = lab.engine.journal
    begin, step, close = journal.begin, journal.step, journal.close

    def on_begin(kind: str, vm_uuid: str, plan: dict[str, Any], **kw: Any) -> str:
        seen.append(("begin", json.loads(json.dumps(plan))))
        return begin(kind, vm_uuid, plan, **kw)

    def on_step(op: str, kind: str, name: str, **update: Any) -> None:
        seen.append(("step", (name, update)))
        step(op, kind, name, **update)

    def on_close(op: str, state: str, **kw: Any) -> None:
        seen.append(("close", state))
        close(op, state, **kw)

    journal.begin, journal.step, journal.close = on_begin, on_step, on_close  # type: ignore[method-assign,assignment]
    snapshot = lab.hv.snapshot_disks

    def on_switch(*args: Any, **kw: Any) -> None:
        seen.append(("switch", None))
        snapshot(*args, **kw)

    lab.hv.snapshot_disks = on_switch  # type: ignore[method-assign]
    return seen


def _kinds(seen: list[tuple[str, Any]]) -> list[str]:
    return [k if k != "step" else f"step {v[0]}" for k, v in seen]


def _last_op(lab: Lab) -> tuple[str, str]:
    (op,) = lab.engine.operations()
    return op.state, op.step


def test_a_crash_create_commits_its_plan_and_its_end_only(lab: Lab) -> None:
    lab_domain(lab.hv)
    seen = _spy(lab)
    group = lab.engine.create(vm="vm1", name="g", consistency="crash")
    assert _kinds(seen) == ["begin", "switch", "close"]
    plan = seen[0][1]
    assert plan["consistency"] == {
        "type": "Crash",
        "frozen_filesystems": [],
        "freeze_millis": None,
        "note": None,
    }
    assert len(plan["overlays"]) == 3  # every overlay named before one is made
    assert _last_op(lab) == ("done", "switched")
    assert (group.consistency_type, group.consistency_note) == ("Crash", None)


def test_an_auto_create_without_an_agent_journals_why_before_the_switch(lab: Lab) -> None:
    lab_domain(lab.hv)
    seen = _spy(lab)
    group = lab.engine.create(vm="vm1", name="g")
    assert _kinds(seen) == ["begin", "step switching", "switch", "close"]
    assert "consistency" not in seen[0][1]
    assert seen[1][1][1]["consistency"]["note"] == FALLBACK
    assert _last_op(lab) == ("done", "switched")
    assert group.consistency_note == FALLBACK


def test_a_frozen_create_commits_freezing_and_thawed_around_the_switch(lab: Lab) -> None:
    lab_domain(lab.hv)
    lab.hv.agents[VM] = MOUNTS
    seen = _spy(lab)
    group = lab.engine.create(vm="vm1", name="g", consistency="application")
    assert _kinds(seen) == ["begin", "step freezing", "switch", "step thawed", "close"]
    assert seen[3][1][1]["consistency"]["type"] == "Application"
    assert _last_op(lab) == ("done", "switched")
    assert group.consistency_type == "Application"


@pytest.mark.parametrize(
    ("consistency", "agent", "expected"),
    [
        ("crash", False, ("Crash", None)),
        ("auto", False, ("Crash", FALLBACK)),
        ("application", True, ("Application", None)),
    ],
)
@pytest.mark.parametrize("step", ["create:overlays", "create:switched"])
def test_a_kill_after_the_overlays_or_the_switch_ends_as_the_create_would(
    lab: Lab,
    die_at: list[str],
    step: str,
    consistency: str,
    agent: bool,
    expected: tuple[str, str | None],
) -> None:
    paths = lab_domain(lab.hv)
    if agent:
        lab.hv.agents[VM] = MOUNTS
    files = set(lab.images.images)
    die_at.append(step)
    with pytest.raises(Killed):
        lab.engine.create(vm="vm1", name="g", consistency=consistency)
    (op,) = lab.engine.recover()
    if step == "create:overlays":  # made, not switched: rolled back, nothing left
        assert op.state == "rolled-back"
        assert [d.path for d in lab.hv.domains[VM].disks] == paths
        assert set(lab.images.images) == files
        assert lab.engine.list_groups() == []
        return
    assert op.state == "done"
    (group,) = lab.engine.list_groups()
    assert (group.consistency_type, group.consistency_note) == expected


def test_recording_the_group_reads_no_volume_after_the_switch(
    lab: Lab, mocker: MockerFixture, die_at: list[str]
) -> None:
    """The volumes as synced under the VM's lock are what the group records; recovery,
    which has no such view, reads them from the store. Both record the same rows."""
    lab_domain(lab.hv)
    read = mocker.spy(Repo, "volume_tops")
    live = lab.engine.create(vm="vm1", name="g1", consistency="crash")
    assert read.call_count == 0
    die_at.append("create:switched")
    with pytest.raises(Killed):
        lab.engine.create(vm="vm1", name="g2", consistency="crash")
    (op,) = [o for o in lab.engine.recover()]
    assert op.state == "done" and read.call_count == 1
    recovered = next(g for g in lab.engine.list_groups() if g.name == "g2")
    for a, b in zip(live.refs, recovered.refs, strict=True):
        assert (a.volume_uuid, a.device_id, a.volume_name, a.volume_type) == (
            b.volume_uuid,
            b.device_id,
            b.volume_name,
            b.volume_type,
        )
        assert a.volume_last_attach_date == b.volume_last_attach_date
