"""An instant recovery's copy and the room it needs (ops/pull_room.py, ops/instant.py),
on the fakes: refused before anything is made when the pulls cannot fit; a pull that
ends unfinished (QEMU: ENOSPC, a failed write) is tried again, then the copy is said
stalled, the operation left open and the VM running on its thin disks, and a later
recover goes on once there is room."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from snapgroup.domain.errors import OperationError
from snapgroup.ops import notices
from snapgroup.ops.instant import PULL_TRIES, CopyStalled
from tests.unit.conftest import Lab
from tests.unit.test_instant import _copy_through, _operation, _pulling, backed_up

__all__ = ["backed_up"]  # the fixture, shared with test_instant


def test_an_instant_restore_that_cannot_be_copied_local_is_refused_first(
    lab: Lab, backed_up: tuple[str, list[str]], tmp_path: Path
) -> None:
    repo, (_, b2) = backed_up
    (tmp_path / "new").mkdir()
    lab.images.free = 1 << 20  # less than the three disks' data and tables (~1.7 MiB)
    with pytest.raises(OperationError, match=r"copying 3 disk\(s\) local needs \d+ MiB"):
        lab.engine.instant_restore(b2, source=repo, as_vm="new", disk_dir=str(tmp_path / "new"))
    assert not [d for d in lab.hv.domains.values() if d.name == "new"]  # no VM
    assert os.listdir(tmp_path / "new") == []  # no overlay left
    assert [o.state for o in lab.engine.operations() if o.kind == "restore"][-1] == "rolled-back"
    lab.images.free = 1 << 40
    assert lab.engine.prune_backups(at=repo, vm="vm1", keep=1).pruned  # no hold left


def _unfinished(lab: Lab) -> None:
    """QEMU ends every running pull before its end (its disk still on its backing)."""
    lab.hv.pulls.clear()


def test_a_pull_that_keeps_ending_unfinished_stalls_the_copy_which_recover_takes_up(
    lab: Lab, backed_up: tuple[str, list[str]]
) -> None:
    repo, (_, b2) = backed_up
    done, copying = lab.engine.instant_restore(b2, source=repo, as_vm="new")
    for _ in range(PULL_TRIES - 1):  # tried again while it may yet go through
        _unfinished(lab)
        lab.engine.recover()
        assert _pulling(lab) == ["vda"]
    _unfinished(lab)
    with pytest.raises(
        CopyStalled, match=f"disk vda is stalled: QEMU ended its pull unfinished {PULL_TRIES} times"
    ):
        lab.engine.instant_follow(copying.operation)
    assert _operation(lab, copying.operation) == "running"  # left open
    assert lab.hv.domains[done.vm_uuid].state.is_live  # type: ignore[index]
    with notices.collecting() as warnings:
        lab.engine.recover()  # says it, and starts over
    assert any("disk vda is stalled" in w for w in warnings), warnings
    lab.engine.recover()
    assert _pulling(lab) == ["vda"]
    assert _copy_through(lab, copying.operation) == [["vda"], ["vdb"], ["vdc"]]
    assert _operation(lab, copying.operation) == "done"


def test_room_gone_mid_copy_stalls_it_with_the_figures_until_there_is_room(
    lab: Lab, backed_up: tuple[str, list[str]]
) -> None:
    repo, (_, b2) = backed_up
    _, copying = lab.engine.instant_restore(b2, source=repo, as_vm="new")
    lab.hv.finish_pulls()  # vda copied; then the filesystem fills
    lab.images.free = 64 << 10
    with pytest.raises(CopyStalled, match=r"disk vdb is stalled: copying 1 disk\(s\) local needs"):
        lab.engine.instant_follow(copying.operation)
    assert _pulling(lab) == [] and _operation(lab, copying.operation) == "running"
    with notices.collecting() as warnings:
        lab.engine.recover()
    assert any("free space, then `snapgroup recover` goes on" in w for w in warnings)
    lab.images.free = 1 << 40
    lab.engine.recover()  # room again: the copy goes on
    assert _copy_through(lab, copying.operation) == [["vdb"], ["vdc"]]
    assert _operation(lab, copying.operation) == "done"
