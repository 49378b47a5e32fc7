"""Issue 11, parts 2 and 3, on real libvirtd + QEMU + qemu-img: a snapshot file missing
on a side branch of the tree (not on the current top's chain). `verify` must name it
with the groups it breaks, `check` must call those groups unavailable, and a partial
revert of the untouched disks must still work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from snapgroup.api import Engine
from snapgroup.domain.errors import OperationError
from snapgroup.domain.inventory import Group
from snapgroup.testing.labvm import LabVm
from tests.lab.tools import backing_chain, domblklist, export, same, sh, write_offline

pytestmark = pytest.mark.lab
TARGETS = ["vda", "vdb", "vdc"]


def _tops(vm: LabVm) -> dict[str, str]:
    return domblklist(vm.name, inactive=True)


def _write(vm: LabVm, pattern: int, offset_mib: int) -> None:
    for target in TARGETS:
        write_offline(_tops(vm)[target], pattern, offset_mib)


def _cli(engine: Engine, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SNAPGROUP_NO_DAEMON": "1"}
    return subprocess.run(
        [sys.executable, "-m", "snapgroup", "--json", "--db", engine.db.url, *argv],
        capture_output=True,
        text=True,
        env=env,
    )


def _side_branch(engine: Engine, vm: LabVm, moved_to: Path) -> tuple[Group, Group, Group, str]:
    """The issue's state: g1, write, g2, write, revert g1 (safety group S), then g2's vdb
    snapshot file moved away. Returns g1, g2, S and the moved file's path."""
    _write(vm, 0x11, 0)
    g1 = engine.create(vm=vm.name, name="g1")
    _write(vm, 0x22, 1)
    g2 = engine.create(vm=vm.name, name="g2")
    _write(vm, 0x33, 2)
    report = engine.revert(g1.uuid)
    assert report.error is None and report.safety_group is not None
    (vdb,) = [r for r in g2.refs if r.device_id == 1]
    path = vdb.install_path
    # g2's vdb file is on a side branch now: not in the current top's chain
    assert path not in backing_chain(_tops(vm)["vdb"])
    os.rename(path, moved_to)
    return g1, g2, report.safety_group, path


def test_verify_names_a_missing_file_on_a_side_branch_and_the_groups_it_breaks(
    engine: Engine, stopped_vm: LabVm, tmp_path: Path
) -> None:
    vm = stopped_vm
    _g1, g2, safety, path = _side_branch(engine, vm, tmp_path / "away.qcow2")

    diffs = engine.verify(vm=vm.name)

    missing = [d for d in diffs if d.kind == "file-missing"]
    assert len(missing) == 1, [d.to_dict() for d in diffs]
    assert path in missing[0].detail
    (vdb,) = [r for r in g2.refs if r.device_id == 1]
    assert missing[0].volume_uuid == vdb.volume_uuid
    # g2 reads it, and so does the safety group (its vdb file sits on it); g1 does not
    assert set(missing[0].groups) == {g2.uuid, safety.uuid}
    assert [d.kind for d in diffs] == ["file-missing"]
    # the CLI says the same, with the groups, and fails
    result = _cli(engine, "verify", "--vm", vm.name)
    assert result.returncode == 1, result.stderr
    (doc,) = json.loads(result.stdout)["differences"]
    assert doc["kind"] == "file-missing" and sorted(doc["groups"]) == sorted([g2.uuid, safety.uuid])

    os.rename(tmp_path / "away.qcow2", path)  # back where it was: nothing to report
    assert engine.verify(vm=vm.name) == []


def test_verify_names_a_side_branch_file_on_the_wrong_backing_file(
    engine: Engine, stopped_vm: LabVm, tmp_path: Path
) -> None:
    """Existence is not enough: each file's real backing file must be its recorded parent's."""
    vm = stopped_vm
    g1, g2, safety, path = _side_branch(engine, vm, tmp_path / "away.qcow2")
    os.rename(tmp_path / "away.qcow2", path)
    (vdc_g2,) = [r for r in g2.refs if r.device_id == 2]
    (vdc_safety,) = [r for r in safety.refs if r.device_id == 2]
    # the safety group's vdc file now reads g1's vdc file directly, skipping g2's
    (vdc_g1,) = [r for r in g1.refs if r.device_id == 2]
    sh(
        "qemu-img",
        "rebase",
        "-u",
        "-F",
        "qcow2",
        "-b",
        vdc_g1.install_path,
        vdc_safety.install_path,
    )

    diffs = engine.verify(vm=vm.name)

    (diff,) = diffs
    assert diff.kind == "chain-mismatch", diff.to_dict()
    assert vdc_safety.install_path in diff.detail and vdc_g2.install_path in diff.detail
    assert diff.groups == (safety.uuid,)


def test_check_calls_a_group_with_a_missing_side_branch_file_unavailable(
    engine: Engine, stopped_vm: LabVm, tmp_path: Path
) -> None:
    vm = stopped_vm
    g1, g2, safety, path = _side_branch(engine, vm, tmp_path / "away.qcow2")

    states = {s.uuid: s for s in engine.check([g1.uuid, g2.uuid, safety.uuid])}

    assert states[g1.uuid].available, states[g1.uuid]
    for group in (g2, safety):
        state = states[group.uuid]
        assert not state.available
        assert state.reason is not None and path in state.reason and "vdb" in state.reason
    # the CLI's document says so too
    result = _cli(engine, "check", g2.uuid)
    (doc,) = json.loads(result.stdout)["results"]
    assert doc["available"] is False and path in doc["reason"], result.stdout

    os.rename(tmp_path / "away.qcow2", path)
    assert all(s.available for s in engine.check([g1.uuid, g2.uuid, safety.uuid]))


def test_partial_revert_restores_the_untouched_disks_and_refuses_the_missing_one(
    engine: Engine, stopped_vm: LabVm, tmp_path: Path
) -> None:
    vm = stopped_vm
    _g1, g2, _safety, path = _side_branch(engine, vm, tmp_path / "away.qcow2")
    saved = {
        r.volume_snapshot_uuid: export(r.install_path, tmp_path / f"{r.device_id}.qcow2")
        for r in g2.refs
        if r.install_path != path
    }
    vdb_now = export(_tops(vm)["vdb"], tmp_path / "vdb-now.qcow2")
    before = _tops(vm)

    with pytest.raises(OperationError, match="unavailable"):
        engine.revert(g2.uuid)
    with pytest.raises(OperationError, match=os.path.basename(path)):
        engine.revert(g2.uuid, volumes=[r.volume_uuid for r in g2.refs])
    assert _tops(vm) == before  # refused with nothing changed

    keep = [r for r in g2.refs if r.install_path != path]
    report = engine.revert(g2.uuid, volumes=[r.volume_uuid for r in keep])

    assert report.error is None, report.to_response()
    assert [r.volume_uuid for r in report.results] == [r.volume_uuid for r in keep]
    now = _tops(vm)
    for ref in keep:
        assert same(saved[ref.volume_snapshot_uuid], now[TARGETS[ref.device_id]])
    assert same(vdb_now, now["vdb"])  # untouched (a safety group's overlay on top of it)
    assert path not in backing_chain(now["vdb"])
