"""A memory group's saved state resumed as another domain, on the fakes
(snapgroup.ops.memory_copies): clone --start, export (the state carried, compressed,
checked), restore --as NEW --start, and what a killed resume leaves."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from snapgroup.adapters.backup_repo import BackupRepo
from snapgroup.cli.context import Context
from snapgroup.cli.main import main
from snapgroup.domain.backup_manifest import MEMORY_FILE
from snapgroup.domain.errors import HypervisorError, OperationError
from snapgroup.domain.models import VmState
from snapgroup.testing.fake_memory import OWNER
from snapgroup.testing.fakes import lab_domain
from tests.unit.conftest import Killed, Lab

VM = "a" * 32


class _Repo(BackupRepo):
    """The real repository; no QEMU runs here to be let in."""

    def open_to_qemu(self, files: Sequence[str]) -> None:
        pass


def _memory_group_then_run_on(
    lab: Lab, directory: str = "/lab"
) -> tuple[str, list[dict[int, str]]]:
    """A memory group taken while the guest's RAM says counter=41; then the guest ran on
    (RAM counter=99, every disk changed). The group and the disks' view at the snapshot."""
    lab_domain(lab.hv, directory=directory)
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


def _memory_files(lab: Lab) -> set[str]:
    return {p for p in lab.images.images if p.endswith(".mem")}


def test_clone_start_of_a_memory_group_resumes_a_copy(lab: Lab) -> None:
    uuid, at_snapshot = _memory_group_then_run_on(lab)
    group_file = lab.engine.get(uuid).memory.file  # type: ignore[union-attr]
    before = lab.images.digest(group_file)
    original = [d.path for d in lab.hv.domains[VM].disks]

    made = lab.engine.clone(uuid, name="c1", start=True)

    assert made.state == "Running" and made.resumed
    assert made.note is not None and "clock not set" in made.note  # the fake clone: no agent
    assert lab.hv.ram[made.uuid] == "counter=41"  # the group's moment, not a boot
    assert lab.view_of_vm(made.uuid) == at_snapshot
    ((vm, copy, sources, paused),) = lab.hv.called("restore_memory")
    assert vm == made.uuid and copy != group_file and not paused
    assert sources == {d.target: d.install_path for d in made.disks}
    assert os.path.dirname(copy) == os.path.dirname(group_file)  # beside it
    assert _memory_files(lab) == {group_file}  # the copy is gone once resumed
    assert made.to_inventory()["resumedFromMemory"] is True
    # The original is untouched: running on its disks, its later state, its group intact.
    assert lab.hv.domains[VM].state is VmState.RUNNING and lab.hv.ram[VM] == "counter=99"
    assert [d.path for d in lab.hv.domains[VM].disks] == original
    assert lab.images.digest(group_file) == before
    assert lab.images.images[group_file].clusters[OWNER] == VM
    assert lab.engine.check([uuid])[0].available
    assert [r.state for r in lab.engine.operations() if r.kind == "resume-state"] == ["done"]


def test_cli_clone_start_says_it_resumed(lab: Lab) -> None:
    uuid, _ = _memory_group_then_run_on(lab)
    out, err = io.StringIO(), io.StringIO()

    def context(args: object) -> Context:
        return Context(make_engine=lambda: lab.engine, as_json=getattr(args, "json", False))

    code = main(
        ["clone", uuid, "--name", "c1", "--start"], out=out, err=err, context_factory=context
    )
    assert code == 0, err.getvalue()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("VM c1 (") and lines[0].endswith(") is Running")
    assert lines[1] == "resumed from the group's memory state, at the group's moment"
    assert lines[2].startswith("note: guest clock not set")  # the fake clone has no agent


def test_clone_of_a_memory_group_without_start_is_defined_stopped(lab: Lab) -> None:
    uuid, _ = _memory_group_then_run_on(lab)
    made = lab.engine.clone(uuid, name="c1")
    assert made.state == "Stopped" and not made.resumed
    assert lab.hv.called("adopt_memory_state") == [] and len(_memory_files(lab)) == 1


def test_clone_start_is_refused_when_the_copy_does_not_fit(lab: Lab) -> None:
    uuid, _ = _memory_group_then_run_on(lab)
    lab.images.free = 1 << 20
    images = sorted(lab.images.images)
    with pytest.raises(OperationError, match="does not fit"):
        lab.engine.clone(uuid, name="c1", start=True)
    assert sorted(lab.images.images) == images  # nothing made
    assert set(lab.hv.domains) == {VM}


def test_a_resume_that_fails_leaves_the_clone_stopped_and_no_copy(lab: Lab) -> None:
    uuid, _ = _memory_group_then_run_on(lab)
    lab.hv.fail["restore_memory"] = HypervisorError("incompatible save image")
    with pytest.raises(OperationError, match="made but not resumed"):
        lab.engine.clone(uuid, name="c1", start=True)
    (clone,) = [d for d in lab.hv.domains.values() if d.name == "c1"]
    assert clone.state is VmState.STOPPED and len(_memory_files(lab)) == 1


@pytest.mark.parametrize("step", ["resume-state:copied", "resume-state:restoring"])
def test_killed_while_resuming_a_clone_recover_removes_the_copy(
    lab: Lab, die_at: list[str], step: str
) -> None:
    uuid, _ = _memory_group_then_run_on(lab)
    die_at.append(step)
    with pytest.raises(Killed):
        lab.engine.clone(uuid, name="c1", start=True)
    assert len(_memory_files(lab)) == 2  # the group's and the copy
    rows = lab.engine.recover()
    assert [r.state for r in rows if r.kind == "resume-state"] == ["rolled-back"]
    assert len(_memory_files(lab)) == 1
    (clone,) = [d for d in lab.hv.domains.values() if d.name == "c1"]
    assert clone.state is VmState.STOPPED  # defined; `start` boots it cold


# -- backups ---------------------------------------------------------------------------


def _exported(lab: Lab, tmp_path: Path) -> tuple[str, str, str]:
    """A memory group of vm1 (disks in tmp_path/vm) exported: (group, repo, backup)."""
    lab.engine.ctx.backup_store = _Repo
    (tmp_path / "vm").mkdir()
    uuid, _ = _memory_group_then_run_on(lab, directory=str(tmp_path / "vm"))
    repo = str(tmp_path / "repo")
    manifest = lab.engine.export(uuid, to=repo).manifest
    for disk in manifest.disks:  # the fake images know the repository's at their place
        lab.images.chain(str(Path(repo) / VM / manifest.backup_id / disk.file))
    return uuid, repo, manifest.backup_id


def test_export_carries_the_memory_state_compressed_and_checked(lab: Lab, tmp_path: Path) -> None:
    uuid, repo, backup_id = _exported(lab, tmp_path)
    group = lab.engine.get(uuid)
    assert group.memory is not None
    path = Path(repo) / VM / backup_id / MEMORY_FILE
    assert path.is_file()
    ((source, target),) = lab.images.called("pack_memory")
    assert source == group.memory.file and target.endswith(MEMORY_FILE)
    doc = json.loads((Path(repo) / VM / backup_id / "manifest.json").read_text())
    memory = doc["memory"]
    assert memory["file"] == MEMORY_FILE and memory["compressed"] is True
    assert (memory["size"], memory["stateSha256"]) == (group.memory.size, group.memory.sha256)
    assert memory["bytesWritten"] == path.stat().st_size and memory["mode"] == "paused"
    (listed,) = lab.engine.backups(at=repo)
    assert listed.memory is not None and listed.summary()["withMemory"] is True
    assert lab.engine.verify_backup(at=repo, backup_id=backup_id).clean
    # A damaged state is named by verify-backup, and the backup is broken by it.
    path.write_text(path.read_text() + " ")
    report = lab.engine.verify_backup(at=repo, backup_id=backup_id)
    (finding,) = report.findings
    assert finding.name == f"{backup_id}/{MEMORY_FILE}"
    assert report.to_dict()["findings"][0]["file"] == f"{backup_id}/{MEMORY_FILE}"
    assert report.broken == {backup_id: (f"{backup_id}/{MEMORY_FILE}",)}


def test_a_disk_only_backup_has_no_memory(lab: Lab, tmp_path: Path) -> None:
    lab.engine.ctx.backup_store = _Repo
    (tmp_path / "vm").mkdir()
    lab_domain(lab.hv, directory=str(tmp_path / "vm"))
    group = lab.engine.create(vm="vm1", name="d1")
    manifest = lab.engine.export(group.uuid, to=str(tmp_path / "repo")).manifest
    assert manifest.memory is None and "memory" not in manifest.to_dict()
    assert lab.images.called("pack_memory") == []


def test_restore_as_new_start_resumes_the_backups_state(lab: Lab, tmp_path: Path) -> None:
    uuid, repo, backup_id = _exported(lab, tmp_path)
    group_file = lab.engine.get(uuid).memory.file  # type: ignore[union-attr]
    restored = lab.engine.restore(backup_id, source=repo, as_vm="r1", start=True)

    assert restored.state == "Running" and restored.vm_uuid is not None
    assert lab.hv.ram[restored.vm_uuid] == "counter=41"  # the group's moment, not a boot
    ((vm, copy, sources, _paused),) = lab.hv.called("restore_memory")
    assert vm == restored.vm_uuid and sources == dict(restored.files)
    assert os.path.dirname(copy) == os.path.dirname(next(iter(restored.files.values())))
    assert _memory_files(lab) == {group_file}  # the unpacked copy is gone
    assert lab.hv.ram[VM] == "counter=99"  # the original untouched
    assert [r.state for r in lab.engine.operations() if r.kind == "resume-state"] == ["done"]


def test_restore_without_start_does_not_unpack_the_state(lab: Lab, tmp_path: Path) -> None:
    _, repo, backup_id = _exported(lab, tmp_path)
    restored = lab.engine.restore(backup_id, source=repo, as_vm="r1")
    assert restored.state == "Stopped" and lab.images.called("unpack_memory") == []


def test_prune_removes_a_pruned_backups_memory_state(lab: Lab, tmp_path: Path) -> None:
    uuid, repo, first = _exported(lab, tmp_path)
    second = lab.engine.export(uuid, to=repo).manifest.backup_id
    assert (Path(repo) / VM / first / MEMORY_FILE).is_file()
    report = lab.engine.prune_backups(at=repo, vm="vm1", keep=1)
    assert report.pruned == (first,)
    assert not (Path(repo) / VM / first).exists()
    assert (Path(repo) / VM / second / MEMORY_FILE).is_file()
    assert lab.engine.verify_backup(at=repo).clean


def test_a_damaged_memory_state_blocks_only_what_resumes_it(lab: Lab, tmp_path: Path) -> None:
    """The disks are intact: restoring them (to a directory, as a new VM booted cold, or
    instantly) and browsing them must not be refused or stopped for the state; only
    `restore --as --start`, which resumes it, is refused (and verify-backup names it)."""
    uuid, repo, backup_id = _exported(lab, tmp_path)
    path = Path(repo) / VM / backup_id / MEMORY_FILE
    doc = json.loads(path.read_text())  # a cluster of the packed state changed
    doc["clusters"] = {c: f"{v}!" for c, v in doc["clusters"].items()}
    path.write_text(json.dumps(doc))
    lab.images.images.pop(str(path), None)  # the fake reads the file as it is now
    with pytest.raises(OperationError, match=MEMORY_FILE):
        lab.engine.restore(backup_id, source=repo, as_vm="resumed", start=True)
    to_dir = tmp_path / "out"
    assert len(lab.engine.restore(backup_id, source=repo, to_dir=str(to_dir)).files) == 3
    cold = lab.engine.restore(backup_id, source=repo, as_vm="cold")
    assert cold.state == "Stopped"
    (tmp_path / "instant").mkdir()
    restored, copying = lab.engine.instant_restore(
        backup_id, source=repo, as_vm="instant", disk_dir=str(tmp_path / "instant")
    )
    # Instant recovery comes first: booted cold, and said so (not a silent boot).
    assert restored.state == "Running" and not restored.resumed
    assert restored.note is not None and "booted cold" in restored.note
    assert "memory state unpacked is not the one saved" in restored.note
    assert _memory_files(lab) == {_group_file(lab, uuid)}  # the unpacked copy removed
    lab.engine.recover()  # the copy's driver: the checksums first (the disks' alone)
    assert restored.vm_uuid is not None and not lab.hv.called("pause")
    (op,) = [o for o in lab.engine.operations() if o.uuid == copying.operation]
    assert (op.state, op.step) == ("running", "verified"), op.detail
    assert not lab.engine.verify_backup(at=repo, backup_id=backup_id).clean


def test_a_recover_elsewhere_leaves_a_copy_being_resumed_alone(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another command's recover (the daemon, autosnap) while a clone's or a restore's
    copy of the state is made: the copy is the new VM's operation, held by that VM's
    lock until it resumed, so recover leaves it be and the VM resumes."""
    from snapgroup.ops import journal

    recovered: list[object] = []

    def elsewhere(name: str) -> None:
        if name == "resume-state:copied":
            recovered.extend(lab.engine.recover())

    uuid, repo, backup_id = _exported(lab, tmp_path)
    monkeypatch.setattr(journal, "checkpoint", elsewhere)
    made = lab.engine.clone(uuid, name="c1", start=True)
    restored = lab.engine.restore(backup_id, source=repo, as_vm="r1", start=True)
    monkeypatch.undo()
    assert made.resumed and restored.state == "Running" and recovered == []
    assert [r.state for r in lab.engine.operations() if r.kind == "resume-state"] == [
        "done",
        "done",
    ]


def _group_file(lab: Lab, uuid: str) -> str:
    memory = lab.engine.get(uuid).memory
    assert memory is not None
    return memory.file


def test_instant_restore_of_a_memory_backup_resumes_then_copies(lab: Lab, tmp_path: Path) -> None:
    """restore --as --start --instant runs on from the group's moment as --start does
    (it booted cold, silently, before); the copy is journaled and driven as for any."""
    uuid, repo, backup_id = _exported(lab, tmp_path)
    (tmp_path / "instant").mkdir()
    restored, copying = lab.engine.instant_restore(
        backup_id, source=repo, as_vm="i1", disk_dir=str(tmp_path / "instant")
    )
    assert restored.vm_uuid is not None and restored.state == "Running"
    assert restored.resumed  # its note: the clock (this fake VM has no agent)
    assert restored.note is not None and restored.note.startswith("guest clock not set")
    assert lab.hv.ram[restored.vm_uuid] == "counter=41"  # the group's moment, not a boot
    assert (restored.vm_uuid,) not in lab.hv.called("start")
    ((vm, _copy, sources, _paused),) = lab.hv.called("restore_memory")
    assert vm == restored.vm_uuid and sources == dict(restored.files)
    assert _memory_files(lab) == {_group_file(lab, uuid)}  # the unpacked copy is gone
    assert not copying.done and lab.hv.pulls  # its disks being pulled local
    kinds = {r.kind: r.state for r in lab.engine.operations()}
    assert kinds["resume-state"] == "done" and kinds["instant"] == "running"
    assert restored.to_dict()["resumedFromMemory"] is True


def test_cli_instant_restore_says_it_resumed(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, repo, backup_id = _exported(lab, tmp_path)
    (tmp_path / "instant").mkdir()
    monkeypatch.setattr("snapgroup.cli.instant_follow.spawn", lambda args, op: 4242)
    out, err = io.StringIO(), io.StringIO()

    def context(args: object) -> Context:
        return Context(make_engine=lambda: lab.engine, as_json=getattr(args, "json", False))

    argv = ["restore", "--from", repo, backup_id, "--as", "i1", "--start", "--instant"]
    argv += ["--disk-dir", str(tmp_path / "instant")]
    assert main(argv, out=out, err=err, context_factory=context) == 0, err.getvalue()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("VM i1 (") and lines[0].endswith(") is Running")
    assert lines[1] == "resumed from the backup's memory state, at the group's moment"
    assert "follower pid 4242" in lines[2]
    assert err.getvalue().startswith("note: guest clock not set")  # the fake has no agent
