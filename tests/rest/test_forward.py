"""Every host answers for the cluster: a client that talks only to host a operates on a
VM that host b owns; a's server forwards the request to b's (its address in the host
registry), whose answer the client gets. b serves for real on a loopback port here; a
is the TestClient's app; both on one store, each with its own (fake) libvirt."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import text

from snapgroup.api import Engine
from snapgroup.rest import create_app
from snapgroup.rest.auth import Accounts, sha512_hex
from snapgroup.rest.forward import FORWARDED
from snapgroup.rest.jobs import STATE_HEADER
from snapgroup.rest.queue import Pickup
from snapgroup.store.db import Database
from snapgroup.store.jobs import JobStore
from snapgroup.testing.fakes import FakeHypervisor, FakeImageTool, lab_domain
from tests.rest.conftest import CHEAP, PASSWORD, PREFIX

GROUPS = f"{PREFIX}/volume-snapshots/group"


@dataclass
class Cluster:
    a: TestClient  # the only server the client talks to
    a_engine: Engine
    a_hv: FakeHypervisor
    b_engine: Engine
    b_url: str
    auth: dict[str, str]
    b_pickup: Pickup  # b's serve runs the requests queued for b


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def cluster(fast_dir: Path) -> Iterator[Cluster]:
    db = Database(f"sqlite:///{fast_dir / 'store.db'}")
    Accounts(db, cost=CHEAP).set_password("admin", PASSWORD)
    images = FakeImageTool()
    b_hv = FakeHypervisor(images)
    lab_domain(b_hv)
    b = Engine(hypervisor=b_hv, images=images, db=db, host="host-b")
    port = _free_port()
    b_app = create_app(lambda: b)
    server = uvicorn.Server(uvicorn.Config(b_app, host="127.0.0.1", port=port, log_level="warning"))
    serving = threading.Thread(target=server.run)
    serving.start()
    try:
        while not server.started:
            assert serving.is_alive(), "b's server did not start"
            time.sleep(0.01)
        b_url = f"http://127.0.0.1:{port}/zstack"
        b.heartbeat(address=b_url)  # as `serve` does
        b.volumes("vm1")  # b's VM, recorded
        a_images = FakeImageTool()
        a_hv = FakeHypervisor(a_images)  # vm1 is not defined on a
        a = Engine(hypervisor=a_hv, images=a_images, db=db, host="host-a")
        with TestClient(create_app(lambda: a)) as client:
            body = {"logInByAccount": {"accountName": "admin", "password": sha512_hex(PASSWORD)}}
            login = client.put(f"{PREFIX}/accounts/login", json=body)
            assert login.status_code == 200, login.text
            auth = {"Authorization": f"OAuth {login.json()['inventory']['uuid']}"}
            yield Cluster(client, a, a_hv, b, b_url, auth, Pickup(b_app.state.services, b_url))
    finally:
        server.should_exit = True
        serving.join()
        db.dispose()


def _root(engine: Engine) -> str:
    root = next(v.volume_uuid for v in engine.volumes("vm1") if v.volume_type == "Root")
    assert root is not None
    return root


def test_a_client_of_host_a_creates_a_group_of_a_vm_on_host_b(cluster: Cluster) -> None:
    body = {"params": {"rootVolumeUuid": _root(cluster.b_engine), "name": "via-a"}}
    started = cluster.a.post(GROUPS, json=body, headers=cluster.auth)
    assert started.status_code == 202, started.text
    location = started.json()["location"]
    # b runs the job; the client polls a, which answers from the store
    assert location.startswith(f"http://testserver{PREFIX}/api-jobs/")
    deadline = time.monotonic() + 30
    while (polled := cluster.a.get(location, headers=cluster.auth)).status_code == 202:
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.02)
    assert polled.status_code == 200, polled.text
    group = polled.json()["inventory"]
    assert group["name"] == "via-a"
    # a answers for it too (one store): the group is b's, taken by b's libvirt.
    shown = cluster.a.get(f"{GROUPS}/{group['uuid']}", headers=cluster.auth)
    assert shown.status_code == 200 and shown.json()["inventories"][0]["name"] == "via-a"
    assert {name for name, _ in cluster.a_hv.calls} <= {"lookup", "list_vms"}
    assert [g.name for g in cluster.b_engine.list_groups()] == ["via-a"]


def test_a_forwarded_request_is_never_forwarded_again(cluster: Cluster) -> None:
    body = {"params": {"rootVolumeUuid": _root(cluster.b_engine), "name": "loop"}}
    headers = {**cluster.auth, FORWARDED: "host-c"}
    refused = cluster.a.post(GROUPS, json=body, headers=headers)
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert error["code"] == "SYS.1006" and "belongs to host host-b" in error["details"]
    assert cluster.b_engine.list_groups() == []


def _poll(cluster: Cluster, location: str) -> httpx.Response:
    deadline = time.monotonic() + 30
    while True:
        polled: httpx.Response = cluster.a.get(location, headers=cluster.auth)
        if polled.status_code != 202:
            return polled
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.02)


@pytest.mark.parametrize("why", ["not serving", "server down"])
def test_a_request_for_a_host_that_does_not_answer_is_queued_for_it(
    cluster: Cluster, why: str
) -> None:
    """Neither refused nor lost: queued in the store for b, a job Waiting at a until
    b's serve picks it up (its heartbeat's Pickup) and runs it."""
    if why == "not serving":
        cluster.b_engine.heartbeat(serving=False)  # b's server stopped: its address erased
    else:  # registered, but nothing listens there
        cluster.b_engine.heartbeat(address=f"http://127.0.0.1:{_free_port()}/zstack")
    body = {"params": {"rootVolumeUuid": _root(cluster.b_engine), "name": "queued"}}
    started = cluster.a.post(GROUPS, json=body, headers=cluster.auth)
    assert started.status_code == 202, started.text
    location = started.json()["location"]
    assert location.startswith(f"http://testserver{PREFIX}/api-jobs/")
    waiting = cluster.a.get(location, headers=cluster.auth)
    assert waiting.status_code == 202 and waiting.headers[STATE_HEADER] == "Waiting"
    assert cluster.b_engine.list_groups() == []
    assert cluster.b_pickup() == 1  # b's serve, running again
    polled = _poll(cluster, location)
    assert polled.status_code == 200, polled.text
    assert polled.json()["inventory"]["name"] == "queued"
    assert [g.name for g in cluster.b_engine.list_groups()] == ["queued"]
    assert cluster.b_pickup() == 0  # run once


def test_a_queued_request_the_owner_refuses_fails_its_job(cluster: Cluster) -> None:
    cluster.b_engine.heartbeat(serving=False)
    body = {"params": {"rootVolumeUuid": _root(cluster.b_engine), "name": "gone"}}
    started = cluster.a.post(GROUPS, json=body, headers=cluster.auth)
    assert started.status_code == 202, started.text
    with cluster.b_engine.db.transaction() as session:  # b no longer has that volume
        session.execute(text("UPDATE volume SET volume_type = 'Data'"))
    assert cluster.b_pickup() == 1
    polled = _poll(cluster, started.json()["location"])
    assert polled.status_code == 503, polled.text
    assert polled.json()["error"]["code"] == "SYS.1007"
    assert "not Root" in polled.json()["error"]["details"]


def test_a_queued_request_whose_account_was_deleted_fails_its_job(cluster: Cluster) -> None:
    cluster.b_engine.heartbeat(serving=False)
    body = {"params": {"rootVolumeUuid": _root(cluster.b_engine), "name": "orphan"}}
    started = cluster.a.post(GROUPS, json=body, headers=cluster.auth)
    assert started.status_code == 202, started.text
    job = started.json()["location"].rpartition("/")[2]
    Accounts(cluster.b_engine.db).delete("admin")
    assert cluster.b_pickup() == 1
    record = JobStore(cluster.b_engine.db).get(job)
    assert record is not None and (record.state, record.status) == ("Done", 503)
    assert "the account that sent this queued request was deleted" in str(record.document)
    assert cluster.b_engine.list_groups() == []


def test_a_queued_request_is_replayed_past_any_http_proxy(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replay goes to b's own loopback address: with http_proxy set (to a port where
    nothing listens), it reaches b all the same; a proxy is never handed its token."""
    cluster.b_engine.heartbeat(serving=False)
    body = {"params": {"rootVolumeUuid": _root(cluster.b_engine), "name": "proxied"}}
    started = cluster.a.post(GROUPS, json=body, headers=cluster.auth)
    assert started.status_code == 202, started.text
    proxy = f"http://127.0.0.1:{_free_port()}"
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(name, proxy)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert cluster.b_pickup() == 1
    polled = _poll(cluster, started.json()["location"])
    assert polled.status_code == 200, polled.text
    assert [g.name for g in cluster.b_engine.list_groups()] == ["proxied"]
