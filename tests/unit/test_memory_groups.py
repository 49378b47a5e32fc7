"""Memory groups on the fakes (snapgroup.ops.memory_state): create, its refusals with
nothing changed, the listing fields, revert (resumed), delete, check and recovery."""

from __future__ import annotations

import io
import json

import pytest

from snapgroup.cli.context import Context
from snapgroup.cli.main import main
from snapgroup.domain.errors import HypervisorError, InvalidArgument, OperationError
from snapgroup.domain.models import VmState
from snapgroup.ops.memory_state import MEMORY_MARGIN
from snapgroup.testing.fakes import lab_domain
from tests.unit.conftest import Killed, Lab

VM = "a" * 32


def _state(lab: Lab) -> tuple[object, ...]:
    """Everything a refused create must leave as it was."""
    return (
        sorted(lab.images.images),
        [d.path for d in lab.hv.domains[VM].disks],
        lab.hv.domains[VM].state,
        [g.uuid for g in lab.engine.list_groups()],
    )


def test_memory_create_saves_the_memory_and_every_disk_in_one_call(lab: Lab) -> None:
    paths = lab_domain(lab.hv)
    lab.hv.ram[VM] = "counter=41"
    group = lab.engine.create(vm="vm1", name="m1", with_memory=True)

    assert lab.hv.called("snapshot_disks") == []
    ((vm, overlays, memory_file, live),) = lab.hv.called("snapshot_with_memory")
    assert vm == VM and live is False
    assert [o.current for o in overlays] == paths  # type: ignore[attr-defined]
    assert memory_file == group.memory.file if group.memory else None
    assert group.with_memory and group.memory is not None
    # beside the root disk, named by UUID
    assert group.memory.file.startswith("/lab/") and group.memory.file.endswith(".mem")
    assert group.memory.mode == "paused"
    digest = lab.images.digest(group.memory.file)
    assert (group.memory.size, group.memory.sha256) == (digest.size, digest.sha256)
    assert group.consistency_type == "Crash" and "memory" in (group.consistency_note or "")
    assert lab.hv.domains[VM].state is VmState.RUNNING


def test_live_memory_create_says_how_it_was_taken(lab: Lab) -> None:
    lab_domain(lab.hv)
    group = lab.engine.create(vm="vm1", name="m1", with_memory=True, live=True)
    ((*_, live),) = lab.hv.called("snapshot_with_memory")
    assert live is True
    assert group.memory is not None and group.memory.mode == "live"


def test_every_listing_shows_with_memory(lab: Lab) -> None:
    lab_domain(lab.hv)
    disk_only = lab.engine.create(vm="vm1", name="d1")
    memory = lab.engine.create(vm="vm1", name="m1", with_memory=True)
    listed = {g.uuid: g.to_inventory() for g in lab.engine.list_groups(vm="vm1")}
    assert listed[disk_only.uuid]["withMemory"] is False
    assert listed[disk_only.uuid]["memory"] is None
    assert listed[memory.uuid]["withMemory"] is True
    assert listed[memory.uuid]["memory"]["file"] == memory.memory.file  # type: ignore[union-attr]
    assert lab.engine.get(memory.uuid).to_inventory()["withMemory"] is True
    from snapgroup.domain.zquery import parse_query

    page = lab.engine.query_groups(parse_query(q=["name=m1"]))
    (document,) = page.reply(parse_query(q=["name=m1"]))["inventories"]
    assert document["withMemory"] is True and document["memory"]["sha256"]


def _cli(lab: Lab, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()

    def context(args: object) -> Context:
        return Context(make_engine=lambda: lab.engine, as_json=getattr(args, "json", False))

    code = main(list(argv), out=out, err=err, context_factory=context)
    return code, out.getvalue(), err.getvalue()


def test_cli_create_with_memory_and_show(lab: Lab) -> None:
    lab_domain(lab.hv)
    code, out, err = _cli(lab, "--json", "create", "--vm", "vm1", "--name", "m1", "--with-memory")
    assert code == 0, err
    inventory = json.loads(out)["inventory"]
    assert inventory["withMemory"] is True and inventory["memory"]["mode"] == "paused"
    code, out, _ = _cli(lab, "show", inventory["uuid"])
    assert code == 0 and "withMemory:        yes\n" in out and ".mem (" in out
    code, out, _ = _cli(lab, "--json", "list")
    assert code == 0 and json.loads(out)["inventories"][0]["withMemory"] is True


def test_a_stopped_vm_is_refused_with_nothing_changed(lab: Lab) -> None:
    lab_domain(lab.hv, state=VmState.STOPPED)
    before = _state(lab)
    with pytest.raises(OperationError, match="needs it running") as raised:
        lab.engine.create(vm="vm1", name="m1", with_memory=True)
    assert raised.value.code == "SYS.1006"
    assert _state(lab) == before
    assert lab.hv.called("set_disk_sources") == []
    assert lab.engine.operations() == []


def test_a_memory_that_does_not_fit_is_refused_before_anything_pauses(lab: Lab) -> None:
    lab_domain(lab.hv)
    lab.hv.memory[VM] = 1 << 30
    lab.images.free = (1 << 30) + MEMORY_MARGIN - 1
    before = _state(lab)
    with pytest.raises(OperationError, match="would not fit") as raised:
        lab.engine.create(vm="vm1", name="m1", with_memory=True)
    assert raised.value.code == "SYS.1006"
    assert "1024 MiB" in raised.value.details
    assert _state(lab) == before
    assert lab.hv.called("snapshot_with_memory") == [] and lab.hv.called("snapshot_disks") == []
    assert lab.engine.operations() == []
    lab.images.free += 1  # exactly enough
    assert lab.engine.create(vm="vm1", name="m1", with_memory=True).with_memory


def test_application_consistency_and_live_alone_are_refused(lab: Lab) -> None:
    lab_domain(lab.hv)
    lab.hv.agents[VM] = ("/",)
    before = _state(lab)
    with pytest.raises(InvalidArgument, match="would resume frozen"):
        lab.engine.create(vm="vm1", name="m1", with_memory=True, consistency="application")
    with pytest.raises(InvalidArgument, match="--live is for memory groups"):
        lab.engine.create(vm="vm1", name="m1", live=True)
    assert _state(lab) == before
    # auto: no freeze for a memory group (a frozen guest would be saved frozen)
    lab.engine.create(vm="vm1", name="m1", with_memory=True)
    assert lab.hv.called("freeze") == []


def test_a_failed_memory_snapshot_leaves_no_group_no_file(lab: Lab) -> None:
    lab_domain(lab.hv)
    before = _state(lab)
    lab.hv.fail["snapshot_with_memory"] = HypervisorError("save failed")
    with pytest.raises(HypervisorError):
        lab.engine.create(vm="vm1", name="m1", with_memory=True)
    assert _state(lab) == before


def test_killed_after_the_save_recovery_records_the_memory_group(
    lab: Lab, die_at: list[str]
) -> None:
    lab_domain(lab.hv)
    die_at.append("create:switched")
    with pytest.raises(Killed):
        lab.engine.create(vm="vm1", name="m1", with_memory=True)
    assert lab.engine.list_groups() == []
    (row,) = lab.engine.recover()
    assert row.state == "done"
    (group,) = lab.engine.list_groups()
    assert group.memory is not None
    assert group.memory.sha256 == lab.images.digest(group.memory.file).sha256


def test_killed_during_the_save_recovery_removes_the_file_and_resumes(
    lab: Lab, die_at: list[str]
) -> None:
    lab_domain(lab.hv)
    before = _state(lab)
    die_at.append("create:overlays")
    with pytest.raises(Killed):
        lab.engine.create(vm="vm1", name="m1", with_memory=True)
    # as if libvirt had started the save (the file exists) and left the VM paused
    op = lab.engine.operations()[0]
    memory_file = json.loads(op.plan)["memory"]["file"]
    lab.images.add(memory_file, fmt="memory", data={0: "partial"})
    lab.hv.domains[VM].state = VmState.PAUSED
    (row,) = lab.engine.recover()
    assert row.state == "rolled-back" and "resumed" in (row.detail or "")
    assert _state(lab) == before  # no overlay, no memory file, running, no group
