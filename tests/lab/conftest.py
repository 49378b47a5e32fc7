from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from snapgroup.api import Engine, open_engine
from snapgroup.ops import journal
from snapgroup.testing.labvm import LabVm, create_lab_vm, lab_directory
from tests.lab.tools import sh


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


@pytest.fixture
def at_step(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, Callable[[], None]], None]:
    """Run an action the first time the engine reaches a named journal step."""
    actions: dict[str, Callable[[], None]] = {}

    def checkpoint(name: str) -> None:
        action = actions.pop(name, None)
        if action is not None:
            action()

    monkeypatch.setattr(journal, "checkpoint", checkpoint)
    return actions.__setitem__


@pytest.fixture
def restored() -> Iterator[list[str]]:
    """Names of VMs a test restored: destroyed and undefined afterwards (their files
    are in the lab VM's directory, which its fixture removes)."""
    names: list[str] = []
    yield names
    for name in names:
        sh("virsh", "-c", "qemu:///system", "destroy", name, check=False)
        sh("virsh", "-c", "qemu:///system", "undefine", name, "--nvram", check=False)


def _vm(labdir: Path, start: bool) -> Iterator[LabVm]:
    # Under /var/tmp, not pytest's tmp_path: a concurrent pytest session resets
    # /tmp/pytest-of-root to 0700, which would cut QEMU off from the disks.
    name = f"sg-lab-{uuid.uuid4().hex[:8]}"
    vm = create_lab_vm(lab_directory(name), name=name, start=start)
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
