"""Recovery is found by journal kind in a registry the use cases fill: the module that
registers a kind (recovery.HOMES) is loaded when an unfinished operation of that kind is
found, and only then."""

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
    "instant",
    "prune-backups",
    "restore",
    "resume-state",
    "revert",
]


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_every_journal_kind_is_registered_by_its_home() -> None:
    assert sorted(recovery.HOMES) == KINDS
    code = (
        "from snapgroup.ops import recovery\n"
        "for kind in sorted(recovery.HOMES):\n"
        "    fn = recovery.recovery_of(kind)\n"
        "    assert fn is not None and recovery._RECOVERERS[kind] is fn, kind\n"
        "print(' '.join(sorted(recovery._RECOVERERS)))\n"
    )
    assert _run(code).split() == KINDS


def test_an_empty_journal_loads_no_recovery() -> None:
    """`recover` (which every command runs first) with nothing to recover imports no
    use case: none of the modules that register a recovery."""
    code = (
        "import sys\n"
        "from snapgroup.api import Engine\n"
        "from snapgroup.ops import recovery\n"
        "from snapgroup.store.db import Database\n"
        "from snapgroup.testing.fakes import FakeHypervisor, FakeImageTool\n"
        "images = FakeImageTool()\n"
        "engine = Engine(hypervisor=FakeHypervisor(images), images=images, "
        "db=Database('sqlite://'))\n"
        "assert engine.recover() == []\n"
        "print(sorted(m for m in recovery.HOMES.values() if m in sys.modules))\n"
    )
    assert _run(code) == "[]"


def test_a_kind_registers_once() -> None:
    assert recovery.recovery_of("create") is not None
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
