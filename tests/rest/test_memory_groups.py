"""Memory groups over REST, in the ZStack SDK's shape: CreateVolumeSnapshotGroup with
`withMemory: true` answers a memory group; RevertVmFromSnapshotGroup resumes it."""

from __future__ import annotations

from snapgroup.domain.models import VmState
from tests.rest.conftest import VM, Api

GROUPS = "/volume-snapshots/group"


def test_with_memory_creates_a_memory_group_and_revert_resumes_it(api: Api) -> None:
    api.hv.ram[VM] = "counter=41"
    group = api.create(withMemory=True)
    assert group["withMemory"] is True
    memory = group["memory"]
    assert memory["file"].endswith(".mem") and memory["mode"] == "paused"
    assert memory["file"] in api.images.images
    listed = api.call("GET", GROUPS, params={"q": f"uuid={group['uuid']}"}).json()
    assert listed["inventories"][0]["withMemory"] is True
    single = api.call("GET", f"{GROUPS}/{group['uuid']}").json()["inventories"][0]
    assert single["memory"] == memory

    api.hv.ram[VM] = "counter=99"  # the guest ran on, then was stopped (ZStack: stop, revert)
    api.hv.domains[VM].state = VmState.STOPPED
    path = f"{GROUPS}/{group['uuid']}/actions"
    done = api.wait(api.call("PUT", path, json={"revertVmFromSnapshotGroup": {}}))
    assert done.status_code == 200, done.text
    document = done.json()
    assert all(r["success"] for r in document["results"]) and document["resumed"] == "Running"
    assert api.hv.domains[VM].state is VmState.RUNNING and api.hv.ram[VM] == "counter=41"


def test_without_with_memory_a_group_is_disk_only_as_before(api: Api) -> None:
    for params in ({}, {"withMemory": False}):
        group = api.create(**params)
        assert group["withMemory"] is False and group["memory"] is None
    assert api.hv.called("snapshot_with_memory") == []


def test_with_memory_of_a_stopped_vm_fails_with_nothing_made(api: Api) -> None:
    api.root_volume()  # recorded while it runs
    api.hv.domains[VM].state = VmState.STOPPED
    before = dict(api.images.images)
    body = {"params": {"rootVolumeUuid": api.root_volume(), "name": "m", "withMemory": True}}
    done = api.wait(api.call("POST", GROUPS, json=body))
    assert done.status_code == 503
    error = done.json()["error"]
    assert error["code"] == "SYS.1006" and "needs it running" in error["details"]
    assert api.images.images == before and api.engine.list_groups() == []


def test_with_memory_must_be_a_boolean(api: Api) -> None:
    body = {"params": {"rootVolumeUuid": api.root_volume(), "name": "m", "withMemory": "true"}}
    response = api.call("POST", GROUPS, json=body)
    assert response.status_code == 400
    assert api.engine.list_groups() == []
