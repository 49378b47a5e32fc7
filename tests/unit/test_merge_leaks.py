"""A writer killed mid-write (an offline merge's `qemu-img commit`, a safe rebase) leaves
leaked clusters in its file: `recover` frees them where no running VM holds the file,
and `verify` reports any file's as a warning, which `verify --repair` frees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from snapgroup.domain.inventory import Group
from snapgroup.domain.models import VmState
from snapgroup.ports import ProgressFn
from snapgroup.testing.fakes import lab_domain
from tests.unit.conftest import Killed, Lab
from tests.unit.test_cli import cli

VM = "a" * 32


def _two_groups(lab: Lab, tmp_path: Path, state: VmState = VmState.STOPPED) -> list[Group]:
    lab_domain(lab.hv, state=state, directory=str(tmp_path))  # verify lists the directory
    return lab.take_groups(2)


def _commit_killed_midway(lab: Lab, layer: str, leaked: int) -> None:
    """images.commit of `layer` copies one cluster into the base and dies (SIGKILL),
    leaving `leaked` clusters counted as used in the base that nothing references."""
    original = lab.images.commit

    def commit(top: str, *, base: str, progress: ProgressFn | None = None) -> None:
        if top != layer:
            return original(top, base=base, progress=progress)
        lab.images.commit = original  # type: ignore[method-assign]
        cluster, value = next(iter(lab.images.images[top].clusters.items()))
        lab.images.images[base].clusters[cluster] = value
        lab.images.leaks[base] = leaked
        raise Killed("SIGKILL during the commit")

    lab.images.commit = commit  # type: ignore[method-assign]


def test_recover_frees_the_leaks_a_killed_offline_commit_left(lab: Lab, tmp_path: Path) -> None:
    groups = _two_groups(lab, tmp_path)
    current = lab.view_of_vm()
    g1_views = [lab.images.read(r.install_path) for r in groups[1].refs]
    base = groups[0].refs[0].install_path  # g0's vda file: g1's vda layer merges into it
    _commit_killed_midway(lab, groups[1].refs[0].install_path, leaked=7)
    with pytest.raises(Killed):
        lab.engine.delete(groups[0].uuid)

    (op,) = lab.engine.recover()

    assert op.state == "done"
    assert lab.images.called("repair_leaks") == [(base,)]
    assert lab.images.leaks == {}
    assert op.detail is not None and f"{base}: 7 leaked clusters freed" in op.detail
    assert lab.view_of_vm() == current
    assert [lab.images.read(r.install_path) for r in lab.engine.get(groups[1].uuid).refs] == (
        g1_views
    )
    assert lab.engine.verify() == []


def test_a_leak_in_a_running_vms_chain_is_left_and_reported_until_it_is_stopped(
    lab: Lab, tmp_path: Path
) -> None:
    groups = _two_groups(lab, tmp_path)
    base = groups[0].refs[0].install_path
    _commit_killed_midway(lab, groups[1].refs[0].install_path, leaked=1)
    with pytest.raises(Killed):
        lab.engine.delete(groups[0].uuid)
    lab.hv.domains[VM].state = VmState.RUNNING  # started before anyone ran recover

    (op,) = lab.engine.recover()  # the merge is finished live

    assert op.state == "done"
    assert lab.images.called("repair_leaks") == []
    assert op.detail is not None and f"{base}: 1 leaked cluster left (in use" in op.detail
    for repair in (False, True):
        (diff,) = lab.engine.verify(repair=repair)
        assert (diff.kind, diff.severity, diff.repaired) == ("image-leaks", "warning", False)
        assert base in diff.detail and "running VM vm1" in diff.detail
        assert diff.to_dict()["severity"] == "warning"
    assert lab.images.called("repair_leaks") == []

    lab.hv.domains[VM].state = VmState.STOPPED
    (diff,) = lab.engine.verify(repair=True)
    assert (diff.kind, diff.repaired) == ("image-leaks", True)
    assert lab.images.leaks == {}
    assert lab.engine.verify() == []


def test_a_leak_in_a_file_a_clone_runs_on_is_not_repaired(lab: Lab, tmp_path: Path) -> None:
    groups = _two_groups(lab, tmp_path)
    lab.engine.clone(groups[0].uuid, name="copy", start=True)
    snapshot = groups[0].refs[1].install_path  # the original's: the clone's backing file
    lab.images.leaks[snapshot] = 2

    (diff,) = lab.engine.verify(repair=True)  # once, though both VMs' chains have it

    assert (diff.kind, diff.repaired) == ("image-leaks", False)
    assert snapshot in diff.detail and "running VM copy" in diff.detail
    assert lab.images.leaks == {snapshot: 2}


def test_verify_skips_the_file_a_running_qemu_writes(lab: Lab, tmp_path: Path) -> None:
    _two_groups(lab, tmp_path, VmState.RUNNING)
    top = lab.hv.disk_path(VM, "vda")
    assert top is not None
    lab.images.leaks[top] = 3  # what a check of a file being written may well say
    assert lab.engine.verify() == []
    assert top not in [args[0] for args in lab.images.called("check")]


def test_recover_frees_the_leaks_of_a_killed_safe_rebase(lab: Lab, tmp_path: Path) -> None:
    """A delete in a tree rebases the branches off the current path (a safe rebase
    copies data into the child): killed in it, the child's file may hold leaks."""
    g0, g1 = _two_groups(lab, tmp_path)
    lab.engine.revert(g0.uuid)  # g1's file now sits on a side branch of g0's
    g1_child = g1.refs[0].install_path
    original = lab.images.rebase

    def rebase(image: str, *, backing: str | None, backing_format: str, unsafe: bool) -> None:
        if not unsafe and image == g1_child:
            lab.images.rebase = original  # type: ignore[method-assign]
            lab.images.leaks[image] = 4
            raise Killed("SIGKILL during the safe rebase")
        original(image, backing=backing, backing_format=backing_format, unsafe=unsafe)

    lab.images.rebase = rebase  # type: ignore[method-assign]
    with pytest.raises(Killed):
        lab.engine.delete(g0.uuid)

    (op,) = lab.engine.recover()

    assert op.state == "done" and op.detail is not None
    assert f"{g1_child}: 4 leaked clusters freed" in op.detail
    assert lab.images.leaks == {}
    assert lab.engine.verify() == []


def test_verify_exits_0_on_a_leak_alone_and_says_it_is_a_warning(lab: Lab, tmp_path: Path) -> None:
    groups = _two_groups(lab, tmp_path)
    lab.images.leaks[groups[0].refs[0].install_path] = 5

    code, out, _ = cli(lab, "verify")
    assert code == 0 and "image-leaks (warning)" in out and "5 leaked clusters" in out
    code, out, _ = cli(lab, "--json", "verify")
    (diff,) = json.loads(out)["differences"]
    assert (code, diff["kind"], diff["severity"], diff["repaired"]) == (
        0,
        "image-leaks",
        "warning",
        False,
    )
    lab.hv.domains[VM].disks.pop()  # an error beside the warning: exit 1
    code, out, _ = cli(lab, "--json", "verify")
    assert code == 1 and "volume-detached" in out
    code, out, _ = cli(lab, "verify", "--repair")
    assert code == 0 and lab.images.leaks == {}
