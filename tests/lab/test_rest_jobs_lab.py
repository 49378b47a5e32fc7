"""Jobs on a real `snapgroup serve` and a real lab VM: 8 creates sent at once on one
VM all succeed, one after another (the queue); a job waiting for its turn when `serve`
is restarted (SIGTERM) finishes first, and the client polling the new server gets its
result; after a kill -9 the poll answers the job's honest failure and nothing is left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from snapgroup.api import open_engine
from snapgroup.infra.locks import vm_lock
from snapgroup.testing.labvm import LabVm
from tests.lab.test_rest_e2e import (
    GROUPS,
    PASSWORD,
    Client,
    _login,
    _snapgroup,
    start_serve,
)
from tests.lab.tools import backing_chain, domblklist

pytestmark = pytest.mark.lab


class Server:
    """A `snapgroup serve` process that the test stops and starts again."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self.proc: subprocess.Popen[str] | None = None
        self.client: Client | None = None

    def start(self) -> Client:
        self.proc, http = start_serve(self.db_url, timeout=60, stdout=subprocess.DEVNULL)
        old = self.client.session if self.client else ""
        self.client = Client(http, old)
        if not old:
            login = _login(self.client)
            assert login.status_code == 200, login.text
            self.client.session = login.json()["inventory"]["uuid"]
        return self.client

    def stop(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None and self.client is not None
        self.client.http.close()
        self.proc.send_signal(sig)

    def wait_exit(self) -> str:
        assert self.proc is not None
        _, stderr = self.proc.communicate(timeout=120)
        return stderr


@pytest.fixture
def server(labdir: Path) -> Iterator[Server]:
    db_url = f"sqlite:///{labdir / 'jobs.db'}"
    _snapgroup(db_url, "account", "set-password", "admin", "--password-stdin", stdin=PASSWORD)
    running = Server(db_url)
    running.start()
    yield running
    if running.proc is not None and running.proc.poll() is None:
        running.proc.terminate()
        running.wait_exit()


def _root(server: Server, vm: LabVm) -> str:
    views = json.loads(_snapgroup(server.db_url, "--json", "volumes", "--vm", vm.name))
    return str(next(v["volumeUuid"] for v in views["inventories"] if v["volumeType"] == "Root"))


def _relative(location: str) -> str:
    return location[location.index("/zstack/v1/") :]


def test_eight_creates_at_once_on_one_vm_all_succeed_in_turn(
    server: Server, running_vm: LabVm
) -> None:
    client = server.client
    assert client is not None
    root = _root(server, running_vm)
    before = domblklist(running_vm.name)

    def create(n: int) -> httpx.Response:
        body = {"params": {"rootVolumeUuid": root, "name": f"q{n}"}}
        return client.poll(client.call("POST", GROUPS, json=body))

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(create, range(8)))
    assert [r.status_code for r in outcomes] == [200] * 8, [r.text for r in outcomes]
    # In turn: every disk's chain grew by exactly 8, one group's overlay on the other's.
    after = domblklist(running_vm.name)
    for target, original in before.items():
        chain = backing_chain(after[target])
        assert len(chain) == 9 and chain[-1] == original
    engine = open_engine(db=server.db_url)
    try:
        assert engine.verify(vm=running_vm.name) == []
        assert len(engine.list_groups(vm=running_vm.name)) == 8
    finally:
        engine.db.dispose()


def test_a_restart_mid_job_still_gives_the_client_its_result(
    server: Server, running_vm: LabVm
) -> None:
    client = server.client
    assert client is not None
    root = _root(server, running_vm)
    with vm_lock(running_vm.uuid):  # another operation holds the VM: the job waits
        accepted = client.call(
            "POST", GROUPS, json={"params": {"rootVolumeUuid": root, "name": "restarted"}}
        )
        location = _relative(accepted.json()["location"])
        waiting = client.http.get(location, headers=client.auth)
        deadline = time.monotonic() + 10
        while waiting.headers.get("X-Job-State") != "Waiting":
            assert waiting.status_code == 202 and time.monotonic() < deadline
            time.sleep(0.05)
            waiting = client.http.get(location, headers=client.auth)
        server.stop()  # SIGTERM: the server finishes its jobs before it exits
        time.sleep(0.5)
        assert server.proc is not None and server.proc.poll() is None  # still finishing
    assert "Traceback" not in server.wait_exit()
    client = server.start()  # a new process; the session is in the store
    done = client.http.get(location, headers=client.auth)
    assert done.status_code == 200, done.text
    assert done.json()["inventory"]["name"] == "restarted"

    # kill -9 while a job waits: the new server answers its failure; nothing was done.
    before = domblklist(running_vm.name)
    with vm_lock(running_vm.uuid):
        accepted = client.call(
            "POST", GROUPS, json={"params": {"rootVolumeUuid": root, "name": "killed"}}
        )
        location = _relative(accepted.json()["location"])
        time.sleep(0.5)
        server.stop(signal.SIGKILL)
        server.wait_exit()
    client = server.start()
    failed = client.http.get(location, headers=client.auth)
    assert failed.status_code == 503, failed.text
    assert failed.json()["error"]["code"] == "SYS.1001"
    assert domblklist(running_vm.name) == before
    names = [g["name"] for g in client.call("GET", GROUPS).json()["inventories"]]
    assert names == ["restarted"]
    assert os.path.exists(before["vda"])


def test_a_zstack_clients_journey_on_a_real_vm(server: Server, running_vm: LabVm) -> None:
    """Find the VM and its root volume, create, query, look at the tree, delete one
    snapshot, renew the session, ask the version: each as ZStack's SDK calls it."""
    client = server.client
    assert client is not None
    # Listed before anything recorded it (libvirt's), without volumes; the GET records
    # nothing (QueryVolume still has none of its disks).
    listed = client.call("GET", "/vm-instances", params={"q": f"uuid={running_vm.uuid}"})
    (unrecorded,) = listed.json()["inventories"]
    assert (unrecorded["name"], unrecorded["state"]) == (running_vm.name, "Running")
    assert (unrecorded["rootVolumeUuid"], unrecorded["allVolumes"]) == (None, [])
    mine = {"q": f"lastVmInstanceUuid={running_vm.uuid}"}
    assert client.call("GET", "/volumes", params=mine).json()["inventories"] == []
    _root(server, running_vm)  # the VM recorded (`snapgroup volumes`)
    found = client.call("GET", "/vm-instances", params={"q": f"name={running_vm.name}"})
    (vm,) = found.json()["inventories"]
    assert (vm["uuid"], vm["state"]) == (running_vm.uuid, "Running")
    root = vm["rootVolumeUuid"]
    volumes = client.call("GET", "/volumes", params={"q": f"uuid={root}"}).json()["inventories"]
    assert (
        volumes[0]["type"] == "Root"
        and volumes[0]["installPath"] == domblklist(running_vm.name)["vda"]
    )
    made = []
    for name in ("j1", "j2"):
        body = {"params": {"rootVolumeUuid": root, "name": name}}
        done = client.poll(client.call("POST", GROUPS, json=body))
        assert done.status_code == 200, done.text
        made.append(done.json()["inventory"])
    query = {"q": f"vmInstanceUuid={vm['uuid']}", "sort": "+createDate"}
    assert [g["name"] for g in client.call("GET", GROUPS, params=query).json()["inventories"]] == [
        "j1",
        "j2",
    ]
    snaps = client.call("GET", "/volume-snapshots", params={"q": f"volumeUuid={root}"})
    assert len(snaps.json()["inventories"]) == 2
    trees = client.call("GET", "/volume-snapshots/trees", params={"q": f"volumeUuid={root}"})
    (tree,) = trees.json()["inventories"]
    oldest = tree["tree"]["inventory"]
    assert oldest["groupUuid"] == made[0]["uuid"]
    # One chain, the disk's top on its newest snapshot: all of it the current branch.
    (child,) = tree["tree"]["children"]
    assert (tree["current"], tree["tree"]["current"], child["current"]) == (True, True, True)
    assert child["inventory"]["groupUuid"] == made[1]["uuid"] and child["children"] == []
    deleted = client.poll(client.call("DELETE", f"/volume-snapshots/{oldest['uuid']}"))
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["results"][0]["success"] is True
    # Merged away: the child's data went down into the oldest file, the chain is one
    # shorter, and the snapshot is no longer listed.
    assert len(backing_chain(domblklist(running_vm.name)["vda"])) == 2
    left = client.call("GET", "/volume-snapshots", params={"q": f"volumeUuid={root}"})
    assert [s["groupUuid"] for s in left.json()["inventories"]] == [made[1]["uuid"]]
    renewed = client.call(
        "PUT",
        f"/accounts/sessions/{client.session}/renew",
        json={"renewSession": {"duration": 600}},
    )
    assert renewed.status_code == 200, renewed.text
    version = client.http.put("/zstack/v1/management-nodes/actions", json={"getVersion": {}})
    assert version.status_code == 200 and version.json()["version"]
    engine = open_engine(db=server.db_url)
    try:
        assert engine.verify(vm=running_vm.name) == []
    finally:
        engine.db.dispose()


def test_a_reverted_tree_on_a_real_vm(server: Server, stopped_vm: LabVm) -> None:
    """g1, g2; the root volume reverted to g1's snapshot (RevertVolumeFromSnapshot: a
    safety group first); g3. The tree: g1's snapshot has two children, g2's (with the
    safety snapshot under it) and g3's; the current branch is g1 -> g3, and the disk's
    real chain is exactly that branch's files under its top."""
    client = server.client
    assert client is not None
    root = _root(server, stopped_vm)
    made = []
    for name in ("g1", "g2"):
        body = {"params": {"rootVolumeUuid": root, "name": name}}
        done = client.poll(client.call("POST", GROUPS, json=body))
        assert done.status_code == 200, done.text
        made.append(done.json()["inventory"])
    first = next(r for r in made[0]["volumeSnapshotRefs"] if r["volumeUuid"] == root)
    path = f"/volume-snapshots/{first['volumeSnapshotUuid']}/actions"
    reverted = client.poll(client.call("PUT", path, json={"revertVolumeFromSnapshot": {}}))
    assert reverted.status_code == 200, reverted.text
    body = {"params": {"rootVolumeUuid": root, "name": "g3"}}
    done = client.poll(client.call("POST", GROUPS, json=body))
    assert done.status_code == 200, done.text
    made.append(done.json()["inventory"])

    trees = client.call("GET", "/volume-snapshots/trees", params={"q": f"volumeUuid={root}"})
    (tree,) = trees.json()["inventories"]
    top = tree["tree"]
    assert tree["current"] is True
    assert (top["inventory"]["groupUuid"], top["current"]) == (made[0]["uuid"], True)
    g2_branch, g3_branch = top["children"]  # oldest first
    assert (g2_branch["inventory"]["groupUuid"], g2_branch["current"]) == (made[1]["uuid"], False)
    (safety,) = g2_branch["children"]
    assert safety["current"] is False and safety["inventory"]["groupUuid"] not in {
        g["uuid"] for g in made
    }
    assert (g3_branch["inventory"]["groupUuid"], g3_branch["current"]) == (made[2]["uuid"], True)
    assert g3_branch["children"] == []
    # The real chain under the disk's top: g3's file, then g1's: the current branch.
    chain = backing_chain(domblklist(stopped_vm.name)["vda"])
    branch = [g3_branch["inventory"], top["inventory"]]
    assert chain[1:] == [s["primaryStorageInstallPath"] for s in branch]
    latest = client.call(
        "GET", "/volume-snapshots", params={"q": [f"volumeUuid={root}", "latest=true"]}
    )
    assert [s["uuid"] for s in latest.json()["inventories"]] == [g3_branch["inventory"]["uuid"]]
