"""Memory groups on the fakes (snapgroup.ops.memory_state): create, its refusals with
nothing changed, the listing fields, revert (resumed), delete, check and recovery."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from snapgroup.cli.context import Context
from snapgroup.cli.main import main
from snapgroup.domain.errors import HypervisorError, InvalidArgument, OperationError
from snapgroup.domain.models import DomainDisk, VmState
from snapgroup.ops.memory_state import MEMORY_MARGIN
from snapgroup.store.operations import OperationRepo
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


def test_a_writable_disk_the_group_cannot_snapshot_is_refused(lab: Lab) -> None:
    """A raw data disk skipped (skip_unsupported) would be resumed by a revert as it
    is then, under a guest memory that knew it as it was at the snapshot."""
    lab_domain(lab.hv, data_disks=1)
    lab.images.add("/lab/raw.img", fmt="raw")
    lab.hv.domains[VM].disks += [DomainDisk("vdc", "disk", "file", "/lab/raw.img", "raw")]
    before = _state(lab)
    with pytest.raises(OperationError, match="vdc: format raw"):
        lab.engine.create(vm="vm1", name="m", with_memory=True, skip_unsupported=True)
    assert _state(lab) == before and lab.hv.called("snapshot_with_memory") == []
    assert lab.engine.create(vm="vm1", name="d", skip_unsupported=True).memory is None


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


def test_recovery_waits_while_libvirt_still_saves_for_a_killed_create(
    lab: Lab, die_at: list[str]
) -> None:
    """libvirtd goes on with a snapshot whose client was killed: recovery must not take
    the overlays and the memory file away under it (found on the real stack: the VM
    ended on a deleted overlay)."""
    lab_domain(lab.hv)
    die_at.append("create:overlays")
    with pytest.raises(Killed):
        lab.engine.create(vm="vm1", name="m1", with_memory=True)
    (op,) = lab.engine.operations()
    plan = json.loads(op.plan)
    memory_file = plan["memory"]["file"]
    lab.images.add(memory_file, fmt="memory", data={0: "being written"})
    lab.hv.domains[VM].state = VmState.PAUSED  # libvirt paused it for the save
    lab.hv.busy.add(VM)
    (row,) = lab.engine.recover()
    assert row.state == "running"  # left for later: nothing touched
    assert memory_file in lab.images.images
    assert all(o["overlay"] in lab.images.images for o in plan["overlays"])
    assert lab.hv.called("resume") == []
    # libvirtd finishes the snapshot: the disks on the overlays, the VM running again
    for o in plan["overlays"]:
        lab.hv.set_disk_sources(VM, {o["target"]: o["overlay"]})
    lab.hv.domains[VM].state = VmState.RUNNING
    lab.hv.busy.clear()
    (row,) = lab.engine.recover()
    assert row.state == "done"
    (group,) = lab.engine.list_groups()
    assert group.memory is not None and group.memory.file == memory_file


# -- revert ------------------------------------------------------------------------------


def _memory_group_then_run_on(lab: Lab) -> tuple[str, list[dict[int, str]]]:
    """A memory group taken while the guest's RAM says counter=41, then the guest ran
    on (RAM and disks changed). Returns the group and the disks' view at the snapshot."""
    lab_domain(lab.hv)
    lab.hv.agents[VM] = ("/",)
    lab.hv.ram[VM] = "counter=41"
    for disk in lab.hv.domains[VM].disks:
        assert disk.path is not None
        lab.images.write(disk.path, 1, f"{disk.target}@snapshot")
    at_snapshot = lab.view_of_vm()
    group = lab.engine.create(vm="vm1", name="m1", with_memory=True)
    lab.hv.ram[VM] = "counter=99"
    for disk in lab.hv.domains[VM].disks:
        assert disk.path is not None
        lab.images.write(disk.path, 1, f"{disk.target}@later")
    return group.uuid, at_snapshot


def test_revert_of_a_memory_group_resumes_the_vm_at_that_moment(lab: Lab) -> None:
    uuid, at_snapshot = _memory_group_then_run_on(lab)
    report = lab.engine.revert(uuid, stop=True, stop_timeout=0)

    assert report.error is None and report.resumed == "Running" and report.note is None
    assert lab.hv.domains[VM].state is VmState.RUNNING
    assert lab.hv.ram[VM] == "counter=41"  # the saved state, not the later one
    assert lab.view_of_vm() == at_snapshot  # every disk back at the snapshot
    ((_vm, memory_file, sources, paused),) = lab.hv.called("restore_memory")
    assert memory_file == lab.engine.get(uuid).memory.file  # type: ignore[union-attr]
    assert sources == {d.target: d.path for d in lab.hv.domains[VM].disks} and not paused
    assert lab.hv.clock_set == [VM]  # the guest clock set through the agent
    assert report.safety_group is not None  # the present was kept, as for any revert
    assert report.to_response()["resumed"] == "Running"
    # again: a second revert to the same group works the same
    lab.hv.ram[VM] = "counter=150"
    second = lab.engine.revert(uuid, stop=True, stop_timeout=0)
    assert second.error is None and lab.hv.ram[VM] == "counter=41"
    assert lab.view_of_vm() == at_snapshot
    assert lab.engine.check([uuid])[0].available


def test_revert_paused_leaves_the_vm_paused_and_the_clock_alone(lab: Lab) -> None:
    uuid, _ = _memory_group_then_run_on(lab)
    report = lab.engine.revert(uuid, stop=True, stop_timeout=0, paused=True)
    assert report.error is None and report.resumed == "Paused"
    assert lab.hv.domains[VM].state is VmState.PAUSED and lab.hv.clock_set == []
    assert report.note is not None and "paused" in report.note


def test_without_an_agent_the_revert_says_the_clock_was_not_set(lab: Lab) -> None:
    uuid, _ = _memory_group_then_run_on(lab)
    del lab.hv.agents[VM]
    report = lab.engine.revert(uuid, stop=True, stop_timeout=0)
    assert report.error is None and lab.hv.domains[VM].state is VmState.RUNNING
    assert report.note is not None and "guest clock not set" in report.note


def test_a_revert_of_volumes_restores_the_disks_only(lab: Lab) -> None:
    uuid, _ = _memory_group_then_run_on(lab)
    volume = lab.engine.get(uuid).refs[1].volume_uuid
    report = lab.engine.revert(uuid, volumes=[volume], stop=True, stop_timeout=0)
    assert report.error is None and report.resumed is None
    assert lab.hv.called("restore_memory") == []
    assert lab.hv.domains[VM].state is VmState.STOPPED
    with pytest.raises(InvalidArgument, match="--paused"):
        lab.engine.revert(uuid, volumes=[volume], paused=True)


def test_paused_is_refused_for_a_disk_only_group(lab: Lab) -> None:
    lab_domain(lab.hv)
    group = lab.engine.create(vm="vm1", name="d1")
    with pytest.raises(InvalidArgument, match="has none"):
        lab.engine.revert(group.uuid, stop=True, paused=True)
    assert lab.hv.domains[VM].state is VmState.RUNNING


def test_a_disk_only_revert_works_as_before(lab: Lab) -> None:
    lab_domain(lab.hv)
    group = lab.engine.create(vm="vm1", name="d1")
    report = lab.engine.revert(group.uuid, stop=True, stop_timeout=0)
    assert report.error is None and report.resumed is None
    assert lab.hv.domains[VM].state is VmState.STOPPED
    assert lab.hv.called("restore_memory") == []


def test_a_gone_or_changed_memory_file_makes_the_group_unavailable(lab: Lab) -> None:
    uuid, _ = _memory_group_then_run_on(lab)
    memory_file = lab.engine.get(uuid).memory.file  # type: ignore[union-attr]
    lab.images.write(memory_file, 0, "tampered")
    (state,) = lab.engine.check([uuid])
    assert not state.available and "changed since the group was taken" in (state.reason or "")
    tops = [d.path for d in lab.hv.domains[VM].disks]
    with pytest.raises(OperationError, match="unavailable"):
        lab.engine.revert(uuid, stop=True, stop_timeout=0)
    # Refused before --stop touched the running VM: it runs on, on the same disks.
    assert lab.hv.domains[VM].state is VmState.RUNNING
    assert [d.path for d in lab.hv.domains[VM].disks] == tops
    assert lab.hv.called("shutdown") == []
    lab.images.remove(memory_file)
    (state,) = lab.engine.check([uuid])
    assert not state.available and "is missing" in (state.reason or "")


def test_a_vm_renamed_since_the_memory_group_is_refused_before_the_stop(lab: Lab) -> None:
    """libvirt 9.0 restores a saved state only under the name it was saved with: the
    revert of a renamed VM is refused, naming both names, with the VM running on."""
    uuid, _ = _memory_group_then_run_on(lab)
    lab.hv.domains[VM].name = "vm1-renamed"
    tops = [d.path for d in lab.hv.domains[VM].disks]
    with pytest.raises(OperationError, match=r"was named 'vm1'.*domrename vm1-renamed vm1"):
        lab.engine.revert(uuid, stop=True, stop_timeout=0)
    assert lab.hv.domains[VM].state is VmState.RUNNING and lab.hv.called("shutdown") == []
    assert [d.path for d in lab.hv.domains[VM].disks] == tops
    assert lab.hv.called("restore_memory") == []
    assert lab.engine.check([uuid])[0].available  # the group itself is fine
    lab.hv.domains[VM].name = "vm1"  # renamed back: the revert resumes it
    report = lab.engine.revert(uuid, stop=True, stop_timeout=0)
    assert report.error is None and lab.hv.ram[VM] == "counter=41"


def test_a_failed_restore_puts_the_disks_back(lab: Lab) -> None:
    uuid, _ = _memory_group_then_run_on(lab)
    lab.hv.shutdown(VM, timeout=0)
    tops = [d.path for d in lab.hv.domains[VM].disks]
    lab.hv.fail["restore_memory"] = OperationError("incompatible save image")
    report = lab.engine.revert(uuid, safety_group=False)
    assert report.error is not None and "incompatible" in str(report.error.cause)
    assert lab.hv.domains[VM].state is VmState.STOPPED
    assert [d.path for d in lab.hv.domains[VM].disks] == tops  # back where they were
    assert all(p in lab.images.images for p in tops if p)  # and kept (no safety group)
    (op,) = [o for o in lab.engine.operations() if o.kind == "revert"]
    assert op.state == "rolled-back" and "memory state was not restored" in (op.detail or "")
    overlays = [d["overlay"] for d in json.loads(op.plan)["disks"]]
    assert overlays and not any(p in lab.images.images for p in overlays)
    assert lab.engine.check([uuid])[0].available  # and the group can be tried again


@pytest.mark.parametrize("step", ["revert:switched", "revert:restoring"])
def test_killed_before_the_restore_recovery_resumes_the_vm(
    lab: Lab, die_at: list[str], step: str
) -> None:
    uuid, at_snapshot = _memory_group_then_run_on(lab)
    die_at.append(step)
    with pytest.raises(Killed):
        lab.engine.revert(uuid, stop=True, stop_timeout=0)
    assert lab.hv.domains[VM].state is VmState.STOPPED
    rows = lab.engine.recover()
    assert [r.state for r in rows if r.kind == "revert"] == ["done"]
    assert lab.hv.domains[VM].state is VmState.RUNNING and lab.hv.ram[VM] == "counter=41"
    assert lab.view_of_vm() == at_snapshot


@pytest.mark.parametrize("safety", [True, False], ids=["safety", "no-safety"])
@pytest.mark.parametrize(
    "step",
    ["revert:begin", "revert:safety", "create:overlays", "create:switched", "revert:overlays"],
)
def test_killed_before_the_switch_recovery_finishes_the_revert(
    lab: Lab, die_at: list[str], step: str, safety: bool
) -> None:
    """The VM is stopped by then (its running state gone with the stop): recover
    finishes the revert (the safety group settled or taken, never dropped) instead of
    leaving it stopped."""
    uuid, at_snapshot = _memory_group_then_run_on(lab)
    lab.hv.shutdown(VM, timeout=0)
    now = lab.view_of_vm()
    if (step.startswith("create:") or step == "revert:safety") and not safety:
        return  # no safety group: no create inside the revert
    die_at.append(step)
    with pytest.raises(Killed):
        lab.engine.revert(uuid, safety_group=safety)
    assert lab.hv.domains[VM].state is VmState.STOPPED
    with lab.engine.db.transaction() as session:  # a process that is gone, not this one
        journal = OperationRepo(session)
        for row in journal.unfinished(host=lab.engine.ctx.journal.host):
            journal.update(row.uuid, {"pid": 2**22 + 1})
    rows = lab.engine.recover()
    assert [r.state for r in rows if r.kind == "revert"] == ["done"]
    assert lab.hv.domains[VM].state is VmState.RUNNING and lab.hv.ram[VM] == "counter=41"
    assert lab.view_of_vm() == at_snapshot
    taken = [g for g in lab.engine.list_groups() if g.name.startswith("before revert")]
    if safety:  # the present kept whole, once
        (group,) = taken
        fresh = lab.engine.get(group.uuid)
        assert [lab.images.read(r.install_path) for r in fresh.refs] == now
    else:
        assert taken == []
    # Every file is a disk's chain, a group's snapshot or memory file: nothing leaked.
    tops = [d.path for d in lab.hv.domains[VM].disks if d.path]
    used = {layer.path for top in tops for layer in lab.images.chain(top)}
    for g in lab.engine.list_groups():
        used |= {r.install_path for r in g.refs} | ({g.memory.file} if g.memory else set())
    assert set(lab.images.images) == used
    assert lab.engine.recover() == []


def test_killed_after_the_restore_recovery_rolls_forward(lab: Lab, die_at: list[str]) -> None:
    uuid, at_snapshot = _memory_group_then_run_on(lab)
    die_at.append("revert:removed")
    with pytest.raises(Killed):
        lab.engine.revert(uuid, stop=True, stop_timeout=0)
    assert lab.hv.domains[VM].state is VmState.RUNNING
    rows = lab.engine.recover()
    assert [r.state for r in rows if r.kind == "revert"] == ["done"]
    assert len(lab.hv.called("restore_memory")) == 1  # not restored twice
    assert lab.view_of_vm() == at_snapshot


# -- the memory file's life ----------------------------------------------------------------


def test_delete_removes_the_memory_file(lab: Lab) -> None:
    lab_domain(lab.hv)
    group = lab.engine.create(vm="vm1", name="m1", with_memory=True)
    assert group.memory is not None and group.memory.file in lab.images.images
    plan = lab.engine.delete_plan(group.uuid).to_json()
    assert plan["memoryFile"] == group.memory.file and plan["memoryBytes"] == group.memory.size
    report = lab.engine.delete(group.uuid)
    assert report.error is None
    assert group.memory.file not in lab.images.images
    assert lab.engine.list_groups() == []


def test_a_delete_that_keeps_the_group_keeps_its_memory_file(lab: Lab) -> None:
    lab_domain(lab.hv)
    group = lab.engine.create(vm="vm1", name="m1", with_memory=True)
    lab.engine.create(vm="vm1", name="m2")
    lab.hv.fail["block_commit"] = HypervisorError("commit failed")
    lab.hv.fail_times["block_commit"] = 1
    report = lab.engine.delete(group.uuid, mode="Permissive")
    assert report.error is not None
    assert group.memory is not None and group.memory.file in lab.images.images
    assert group.uuid in [g.uuid for g in lab.engine.list_groups()]


def test_killed_delete_recovery_removes_the_memory_file(lab: Lab, die_at: list[str]) -> None:
    lab_domain(lab.hv)
    group = lab.engine.create(vm="vm1", name="m1", with_memory=True)
    die_at.append("delete:begin")
    with pytest.raises(Killed):
        lab.engine.delete(group.uuid)
    assert group.memory is not None and group.memory.file in lab.images.images
    (row,) = [r for r in lab.engine.recover() if r.kind == "delete"]
    assert row.state == "done" and group.memory.file not in lab.images.images
    assert lab.engine.list_groups() == []


def test_ungroup_removes_the_memory_file(lab: Lab) -> None:
    lab_domain(lab.hv)
    group = lab.engine.create(vm="vm1", name="m1", with_memory=True)
    lab.engine.ungroup(group.uuid)
    assert group.memory is not None and group.memory.file not in lab.images.images


def test_verify_names_a_memory_file_gone_changed_or_orphaned(lab: Lab, tmp_path: Path) -> None:
    lab_domain(lab.hv, directory=str(tmp_path))
    group = lab.engine.create(vm="vm1", name="m1", with_memory=True)
    assert group.memory is not None
    assert group.memory.file.startswith(f"{tmp_path}/")  # beside the root disk
    assert [d for d in lab.engine.verify(vm="vm1") if "memory" in d.kind] == []
    lab.images.write(group.memory.file, 0, "tampered")
    (changed,) = [d for d in lab.engine.verify(vm="vm1") if "memory" in d.kind]
    assert changed.kind == "memory-changed" and changed.groups == (group.uuid,)
    assert group.memory.file in changed.detail
    lab.images.remove(group.memory.file)
    (gone,) = [d for d in lab.engine.verify(vm="vm1") if "memory" in d.kind]
    assert gone.kind == "memory-missing" and group.memory.file in gone.detail
    stray = tmp_path / f"{'e' * 32}.mem"
    stray.write_bytes(b"state")
    kinds = {d.kind: d for d in lab.engine.verify(vm="vm1", repair=True)}
    assert (
        kinds["orphan-memory"].severity == "warning" and str(stray) in kinds["orphan-memory"].detail
    )
    assert stray.exists()  # reported, never removed by verify


# -- policies --with-memory ------------------------------------------------------------------


def test_a_memory_policy_takes_memory_groups_and_prunes_their_files(lab: Lab) -> None:
    from datetime import UTC, datetime, timedelta

    from snapgroup.domain.retention import Policy, Retention
    from snapgroup.ops.policies import record_json

    lab_domain(lab.hv)
    record, _ = lab.engine.set_policy(
        Policy("mem", Retention(hourly=1), vms=("vm1",), with_memory=True)
    )
    assert record.policy.with_memory and record_json(record)["withMemory"] is True
    assert lab.engine.policy("mem").policy.with_memory  # stored
    files = []
    for hour in range(3):
        now = datetime(2026, 12, 1, 10 + hour, 30, tzinfo=UTC)
        lab.engine.clock = lambda now=now: now  # type: ignore[misc]
        report = lab.engine.autosnap(now=now, wait=0, parallel=1)
        assert report.exit_status == 0, report.to_json()
        taken = lab.engine.get(report.vms[0].taken.uuid)  # type: ignore[union-attr]
        assert taken.memory is not None
        files.append(taken.memory.file)
    # hourly 1: the older groups were pruned, their memory files with them
    assert [f in lab.images.images for f in files] == [False, False, True]
    lab.hv.domains[VM].state = VmState.STOPPED
    now = datetime(2026, 12, 1, 14, 30, tzinfo=UTC) + timedelta(hours=1)
    report = lab.engine.autosnap(now=now, wait=0, parallel=1)
    assert report.exit_status != 0  # a memory policy takes nothing of a stopped VM, and says so
    assert "needs it running" in str(report.to_json())


def test_a_memory_policy_cannot_ask_for_application_consistency(lab: Lab) -> None:
    from snapgroup.domain.retention import Policy, Retention

    with pytest.raises(InvalidArgument, match="does not freeze"):
        lab.engine.set_policy(
            Policy("m", Retention(hourly=1), with_memory=True, consistency="application")
        )
    assert lab.engine.policies() == []


def test_an_older_store_gains_the_memory_columns(tmp_path: Path) -> None:
    import sqlite3

    from snapgroup.store.db import Database

    path = tmp_path / "old.db"
    Database(f"sqlite:///{path}").dispose()
    with sqlite3.connect(path) as conn:  # as a store made before memory groups
        conn.execute("DROP TABLE schema_stamp")
        for column in ("memory_file", "memory_size", "memory_sha256", "memory_mode"):
            conn.execute(f"ALTER TABLE volume_snapshot_group DROP COLUMN {column}")
        conn.execute("ALTER TABLE snapshot_policy DROP COLUMN with_memory")
    from snapgroup.api import Engine
    from snapgroup.testing.fakes import FakeHypervisor, FakeImageTool

    images = FakeImageTool()
    hv = FakeHypervisor(images)
    lab_domain(hv)
    hv.memory[VM] = 5 << 30  # beyond a 32-bit column
    engine = Engine(hypervisor=hv, images=images, db=Database(f"sqlite:///{path}"))
    try:
        disk_only = engine.create(vm="vm1", name="d1")
        memory = engine.create(vm="vm1", name="m1", with_memory=True)
        assert not disk_only.with_memory and memory.with_memory
        assert memory.memory is not None and memory.memory.size == 5 << 30
        assert engine.get(memory.uuid).memory == memory.memory
    finally:
        engine.db.dispose()


def test_a_memory_file_beyond_4_gib_is_recorded_whole(lab: Lab) -> None:
    lab_domain(lab.hv)
    lab.hv.memory[VM] = 5 << 30  # a BIGINT on PostgreSQL, not an INTEGER
    group = lab.engine.create(vm="vm1", name="m1", with_memory=True)
    assert lab.engine.get(group.uuid).memory == group.memory
    assert group.memory is not None and group.memory.size == 5 << 30
