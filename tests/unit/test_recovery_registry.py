"""Recovery is found by journal kind in a registry the use cases fill: whichever
module of snapgroup.ops is imported first, every kind the engine journals is there."""

from __future__ import annotations

import subprocess
import sys

import pytest

from snapgroup.ops import recovery
from snapgroup.ops.journal import FAILED
from snapgroup.testing.fakes import lab_domain
from tests.unit.conftest import Lab

VM = "a" * 32
KINDS = [
    "clone",
    "create",
    "delete",
    "delete-snapshot",
    "export",
    "prune-backups",
    "restore",
    "revert",
]


@pytest.mark.parametrize(
    "first", ["snapgroup.ops.sync", "snapgroup.ops.recovery", "snapgroup.ops.verify"]
)
def test_every_journal_kind_has_its_recovery_whatever_is_imported_first(first: str) -> None:
    code = (
        f"import {first}\n"
        "from snapgroup.ops import recovery\n"
        "print(' '.join(sorted(recovery._RECOVERERS)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == KINDS


def test_a_kind_registers_once() -> None:
    with pytest.raises(AssertionError, match="two recoveries for create"):
        recovery.recovers("create")(lambda ctx, op, plan, domain: None)


def test_an_unknown_kind_is_closed_failed_and_its_files_left(lab: Lab) -> None:
    lab_domain(lab.hv)
    files = dict(lab.images.images)
    op = lab.engine.journal.begin("mystery", VM, {"anything": 1})
    (row,) = lab.engine.recover()
    assert (row.uuid, row.state, row.detail) == (op, FAILED, "recover: unknown kind mystery")
    assert lab.images.images == files
    assert lab.engine.recover() == []
