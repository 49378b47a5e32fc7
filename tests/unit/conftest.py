from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from snapgroup.engine import Engine
from snapgroup.store.db import Database
from snapgroup.testing.fakes import FakeHypervisor, FakeImageTool


class Lab:
    def __init__(self, engine: Engine, hv: FakeHypervisor, images: FakeImageTool) -> None:
        self.engine, self.hv, self.images = engine, hv, images

    def view_of_vm(self, vm_uuid: str = "a" * 32) -> list[dict[int, str]]:
        """What the guest sees on each disk now."""
        return [self.images.read(d.path) for d in self.hv.domains[vm_uuid].disks if d.path]


@pytest.fixture
def lab(tmp_path: object) -> Iterator[Lab]:
    images = FakeImageTool()
    hv = FakeHypervisor(images)
    db = Database("sqlite://")
    counter = itertools.count(1)
    start = datetime(2026, 11, 26, 22, 0, tzinfo=UTC)
    engine = Engine(
        hypervisor=hv,
        images=images,
        db=db,
        clock=lambda: start + timedelta(seconds=next(counter)),
        new_uuid=lambda: f"{next(counter):032x}",
    )
    yield Lab(engine, hv, images)
    db.dispose()


@pytest.fixture(autouse=True)
def _private_lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNAPGROUP_LOCK_DIR", str(tmp_path / "locks"))
