"""A REST job whose request took a VM over from another host says so: its result
document carries "warnings" beside ZStack's keys. Two engines on one store, each with
its own (fake) libvirt over the same (fake) shared storage; the client talks to b."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from snapgroup.api import Engine
from snapgroup.domain.models import VmState
from snapgroup.rest import create_app
from snapgroup.rest.auth import Accounts
from snapgroup.store.db import Database
from snapgroup.testing.fakes import FakeHypervisor, FakeImageTool, lab_domain
from tests.rest.conftest import CHEAP, PASSWORD, VM, Api, Clock


@pytest.fixture
def moved(fast_dir: Path) -> Iterator[tuple[Api, str]]:
    """b's API, and the root volume of vm1, which a snapshotted and then lost to b
    (a stop on a and a start on b); a's lease has expired since."""
    db = Database(f"sqlite:///{fast_dir / 'store.db'}")
    clock, images = Clock(), FakeImageTool()
    a_hv, b_hv = FakeHypervisor(images), FakeHypervisor(images)
    lab_domain(a_hv, directory="/shared")
    a = Engine(hypervisor=a_hv, images=images, db=db, clock=clock, host="host-a")
    root = a.create(vm="vm1", name="on-a").refs[0].volume_uuid
    domain = a_hv.domains[VM]
    b_hv.define(VM, domain.name, VmState.RUNNING, domain.disks)
    domain.state = VmState.STOPPED
    a_hv.undefine(VM)
    clock.advance(61)
    b = Engine(hypervisor=b_hv, images=images, db=db, clock=clock, host="host-b")
    Accounts(db, clock=clock, cost=CHEAP).set_password("admin", PASSWORD)
    api = Api(TestClient(create_app(lambda: b, clock=clock)), b, b_hv, images, clock)
    with api.client:
        login = api.login()
        assert login.status_code == 200, login.text
        api.session = login.json()["inventory"]["uuid"]
        yield api, root
    db.dispose()


def test_the_job_that_took_the_vm_over_says_so(moved: tuple[Api, str]) -> None:
    api, root = moved
    body = {"params": {"rootVolumeUuid": root, "name": "on-b"}}
    done = api.wait(api.call("POST", "/volume-snapshots/group", json=body))
    assert done.status_code == 200, done.text
    document = done.json()
    assert document["inventory"]["name"] == "on-b"
    assert set(document) == {"inventory", "warnings"}
    (said,) = document["warnings"]
    assert said.startswith(f"VM {VM} taken over from host host-a: host host-a's lease expired")
    # The next job has nothing to say.
    body = {"params": {"rootVolumeUuid": root, "name": "again"}}
    again = api.wait(api.call("POST", "/volume-snapshots/group", json=body))
    assert again.status_code == 200 and set(again.json()) == {"inventory"}
