from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapgroup.api import open_engine
from snapgroup.engine import Engine
from snapgroup.testing.labvm import LabVm, create_lab_vm


@pytest.fixture
def labdir(tmp_path: Path) -> Path:
    """libvirt's qemu user must reach the files: every directory on the path searchable."""
    path = tmp_path
    while path != path.parent:
        if path.stat().st_uid == os.getuid():
            path.chmod(path.stat().st_mode | 0o755)
        path = path.parent
    return tmp_path


@pytest.fixture
def engine(labdir: Path) -> Iterator[Engine]:
    eng = open_engine(connect="qemu:///system", db=f"sqlite:///{labdir / 'snapgroup.db'}")
    yield eng
    eng.db.dispose()


def _vm(labdir: Path, start: bool) -> Iterator[LabVm]:
    vm = create_lab_vm(labdir / "vm", name=f"sg-lab-{uuid.uuid4().hex[:8]}", start=start)
    try:
        yield vm
    finally:
        vm.destroy()


@pytest.fixture
def running_vm(labdir: Path) -> Iterator[LabVm]:
    yield from _vm(labdir, True)


@pytest.fixture
def stopped_vm(labdir: Path) -> Iterator[LabVm]:
    yield from _vm(labdir, False)


@pytest.fixture(params=["live", "offline"])
def any_vm(request: pytest.FixtureRequest, labdir: Path) -> Iterator[LabVm]:
    yield from _vm(labdir, request.param == "live")
