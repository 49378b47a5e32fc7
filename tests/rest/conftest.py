"""The REST app on the fakes (FakeHypervisor, FakeImageTool) and a SQLite file store
(the jobs run in threads: an in-memory SQLite store would be one per thread), through
httpx's TestClient. One fake VM, `vm1`, with a root and two data disks."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from snapgroup.api import Engine
from snapgroup.rest import create_app
from snapgroup.rest.auth import Accounts, sha512_hex
from snapgroup.store.db import Database
from snapgroup.store.repo import Repo
from snapgroup.testing.fakes import FakeHypervisor, FakeImageTool, lab_domain
from snapgroup.testing.guest_fakes import FakeGuestFiles

PREFIX = "/zstack/v1"
VM = "a" * 32
PASSWORD = "s3cret"
CHEAP = 1 << 8  # scrypt cost for test accounts: the suite logs in a lot


@pytest.fixture
def fast_dir(tmp_path: Path) -> Iterator[Path]:
    """On tmpfs when there is one: SQLite's commits need not wait for a disk here."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(dir=shm, prefix="snapgroup-test-") as path:
        yield Path(path)


class Clock:
    """Settable time, for session expiry."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 26, 22, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Api:
    client: TestClient
    engine: Engine
    hv: FakeHypervisor
    images: FakeImageTool
    clock: Clock
    session: str = ""

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"OAuth {self.session}"}

    def login(self, name: str = "admin", password: str = PASSWORD) -> httpx.Response:
        body = {"logInByAccount": {"accountName": name, "password": sha512_hex(password)}}
        response: httpx.Response = self.client.put(f"{PREFIX}/accounts/login", json=body)
        return response

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self.auth, **kwargs.pop("headers", {})}
        response: httpx.Response = self.client.request(
            method, f"{PREFIX}{path}", headers=headers, **kwargs
        )
        return response

    def wait(self, response: httpx.Response, timeout: float = 10.0) -> httpx.Response:
        """Follow ZStack's protocol: 202 + location, poll until it is not 202."""
        assert response.status_code == 202, response.text
        location = response.json()["location"]
        deadline = time.monotonic() + timeout
        while True:
            polled: httpx.Response = self.client.get(location, headers=self.auth)
            if polled.status_code != 202:
                return polled
            assert time.monotonic() < deadline, "the job did not finish"
            time.sleep(0.01)

    def root_volume(self) -> str:
        views = self.engine.volumes("vm1")
        return next(v.volume_uuid for v in views if v.volume_type == "Root" and v.volume_uuid)

    def root_volume_row(self) -> str:
        """The recorded root volume, without discovering (which would claim it)."""
        with self.engine.db.transaction() as session:
            rows = Repo(session).volumes_of_vm(VM)
        return next(v.uuid for v in rows if v.volume_type == "Root" and v.attached)

    def create(self, name: str = "g1", **params: Any) -> dict[str, Any]:
        body = {"params": {"rootVolumeUuid": self.root_volume(), "name": name, **params}}
        done = self.wait(self.call("POST", "/volume-snapshots/group", json=body))
        assert done.status_code == 200, done.text
        inventory: dict[str, Any] = done.json()["inventory"]
        return inventory


def fake_engine(db: Database, clock: Clock) -> tuple[Engine, FakeHypervisor, FakeImageTool]:
    """An engine on the fakes with `vm1`, and the account admin / PASSWORD."""
    images = FakeImageTool()
    hv = FakeHypervisor(images)
    lab_domain(hv)
    engine = Engine(
        hypervisor=hv, images=images, db=db, clock=clock, guest_files=FakeGuestFiles(images.read)
    )
    Accounts(engine.db, clock=clock, cost=CHEAP).set_password("admin", PASSWORD)
    return engine, hv, images


def build(db: Database, clock: Clock, **app_options: Any) -> Api:
    engine, hv, images = fake_engine(db, clock)
    app = create_app(lambda: engine, clock=clock, **app_options)
    return Api(TestClient(app), engine, hv, images, clock)


@pytest.fixture
def api(fast_dir: Path) -> Iterator[Api]:
    db = Database(f"sqlite:///{fast_dir / 'store.db'}")
    built = build(db, Clock())
    with built.client:  # runs the app's lifespan (the job pool's shutdown)
        response = built.login()
        assert response.status_code == 200, response.text
        built.session = response.json()["inventory"]["uuid"]
        yield built
    db.dispose()


@pytest.fixture(autouse=True)
def _private_lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNAPGROUP_LOCK_DIR", str(tmp_path / "locks"))
