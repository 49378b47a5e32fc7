from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from snapgroup.api import Engine
from snapgroup.domain.inventory import Group
from snapgroup.ops import journal
from snapgroup.store.db import Database
from snapgroup.testing.fakes import FakeHypervisor, FakeImageTool
from tests.pgtools import empty_all_tables


class Lab:
    def __init__(self, engine: Engine, hv: FakeHypervisor, images: FakeImageTool) -> None:
        self.engine, self.hv, self.images = engine, hv, images

    def view_of_vm(self, vm_uuid: str = "a" * 32) -> list[dict[int, str]]:
        """What the guest sees on each disk now."""
        return [self.images.read(d.path) for d in self.hv.domains[vm_uuid].disks if d.path]

    def take_groups(self, count: int, vm_uuid: str = "a" * 32) -> list[Group]:
        """Groups g0.. of vm1. Before group n, each disk's cluster 0 says which point in
        time it holds (`<target>@<n>`) and cluster 10+n holds `only<n>`."""
        groups = []
        for n in range(count):
            for disk in self.hv.domains[vm_uuid].disks:
                assert disk.path is not None
                self.images.write(disk.path, 0, f"{disk.target}@{n}")
                self.images.write(disk.path, 10 + n, f"only{n}")
            groups.append(self.engine.create(vm="vm1", name=f"g{n}"))
        return groups


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest) -> Iterator[Database]:
    """Every engine and store test runs on SQLite AND PostgreSQL (nothing SQLite-only).
    PostgreSQL: one store for the session, emptied after each test (fast)."""
    if request.param == "sqlite":
        db = Database("sqlite://")
        yield db
        db.dispose()
        return
    shared: Database = request.getfixturevalue("pg_store")
    yield shared
    empty_all_tables(shared)


@pytest.fixture
def shared(store: Database, tmp_path: Path) -> Iterator[Database]:
    """`store`, but a SQLite file in place of the in-memory one, for tests whose threads
    (two engines, two hosts) share one store: each would see an in-memory one empty."""
    if store.is_postgresql:
        yield store
        return
    db = Database(f"sqlite:///{tmp_path / 'store.db'}")
    yield db
    db.dispose()


@pytest.fixture
def lab(store: Database) -> Iterator[Lab]:
    images = FakeImageTool()
    hv = FakeHypervisor(images)
    db = store
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


@pytest.fixture(autouse=True, scope="session")
def _session_lock_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Never the host's /run/snapgroup/locks, even after a test's monkeypatch.undo()
    (which also undoes _private_lock_dir's setenv): there every test's VM aaaa... is
    one lock, shared with the other xdist workers and anything else on the host."""
    before = os.environ.get("SNAPGROUP_LOCK_DIR")
    os.environ["SNAPGROUP_LOCK_DIR"] = str(tmp_path_factory.mktemp("session-locks"))
    yield
    if before is None:
        del os.environ["SNAPGROUP_LOCK_DIR"]
    else:
        os.environ["SNAPGROUP_LOCK_DIR"] = before


@pytest.fixture(autouse=True)
def _private_lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNAPGROUP_LOCK_DIR", str(tmp_path / "locks"))


class Killed(BaseException):
    """A simulated SIGKILL (the lab tests kill for real)."""


@pytest.fixture
def die_at(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Append a step name: the operation dies there, once."""
    where: list[str] = []

    def checkpoint(name: str) -> None:
        if where and name == where[0]:
            where.clear()
            raise Killed(name)

    monkeypatch.setattr(journal, "checkpoint", checkpoint)
    return where
