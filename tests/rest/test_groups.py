"""The seed's operations over HTTP, as a ZStack client does them: 202 + polling for
operations, 200 for queries, the seed's documents."""

from __future__ import annotations

from typing import Any

from snapgroup.domain.errors import HypervisorError
from snapgroup.domain.models import VmState
from snapgroup.store.repo import Repo
from tests.rest.conftest import PREFIX, VM, Api

GROUPS = "/volume-snapshots/group"


def test_create_answers_202_then_the_inventory(api: Api) -> None:
    root = api.root_volume()
    body = {"params": {"rootVolumeUuid": root, "name": "g1", "description": "d"}}
    accepted = api.call("POST", GROUPS, json={**body, "systemTags": [], "userTags": []})
    assert accepted.status_code == 202
    location = accepted.json()["location"]
    assert location.startswith(f"http://testserver{PREFIX}/api-jobs/")
    done = api.wait(accepted)
    assert done.status_code == 200
    inventory = done.json()["inventory"]
    assert inventory["name"] == "g1" and inventory["description"] == "d"
    assert inventory["vmInstanceUuid"] == VM and inventory["snapshotCount"] == 3
    assert inventory["volumeSnapshotRefs"][0]["volumeUuid"] == root
    # The result stays to be fetched again.
    assert api.client.get(location, headers=api.auth).json() == done.json()


def test_x_job_uuid_names_the_job_and_a_retry_gets_the_same_job(api: Api) -> None:
    job = "0123456789abcdef0123456789abcdef"
    body = {"params": {"rootVolumeUuid": api.root_volume(), "name": "g1"}}
    first = api.call("POST", GROUPS, json=body, headers={"X-Job-UUID": job})
    assert first.json()["location"].endswith(f"/api-jobs/{job}")
    assert api.wait(first).status_code == 200
    again = api.call("POST", GROUPS, json=body, headers={"X-Job-UUID": job})
    assert again.json() == first.json()
    assert len(api.engine.list_groups()) == 1  # not created twice


def test_resource_uuid_names_the_group(api: Api) -> None:
    wanted = "f" * 32
    assert api.create(resourceUuid=wanted)["uuid"] == wanted
    body = {"params": {"rootVolumeUuid": api.root_volume(), "name": "x", "resourceUuid": wanted}}
    response = api.call("POST", GROUPS, json=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "SYS.1007"


def test_an_unknown_root_volume_is_404_at_once(api: Api) -> None:
    body = {"params": {"rootVolumeUuid": "9" * 32, "name": "g"}}
    response = api.call("POST", GROUPS, json=body)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "SYS.1003"


def test_a_data_volume_is_not_a_root_volume(api: Api) -> None:
    data = next(v.volume_uuid for v in api.engine.volumes("vm1") if v.volume_type == "Data")
    response = api.call("POST", GROUPS, json={"params": {"rootVolumeUuid": data, "name": "g"}})
    assert response.status_code == 400


def test_a_failed_create_is_503_with_the_error_and_leaves_nothing(api: Api) -> None:
    root = api.root_volume()
    before = dict(api.images.images)
    api.hv.fail["snapshot_disks"] = HypervisorError("libvirt said no")
    body = {"params": {"rootVolumeUuid": root, "name": "g"}}
    done = api.wait(api.call("POST", GROUPS, json=body))
    assert done.status_code == 503
    assert done.json()["error"]["code"] == "HOST.1002"
    assert api.engine.list_groups() == []
    assert set(api.images.images) == set(before)


def test_query_with_conditions_sort_and_paging(api: Api) -> None:
    made = [api.create(name) for name in ("alpha", "beta", "gamma")]

    def names(**params: Any) -> list[str]:
        response = api.call("GET", GROUPS, params=params)
        assert response.status_code == 200, response.text
        return [inv["name"] for inv in response.json()["inventories"]]

    assert names(q="name=beta") == ["beta"]
    assert names(q=f"vmInstanceUuid={VM}", sort="-name") == ["gamma", "beta", "alpha"]
    assert names(q=["name!=beta", "name~=%a"], sort="+name") == ["alpha", "gamma"]
    assert names(q="uuid?=" + ",".join(g["uuid"] for g in made[:2]), sort="name") == [
        "alpha",
        "beta",
    ]
    assert names(sort=" name", limit=1, start=1) == ["beta"]  # an unencoded "+" is a space
    root = api.root_volume()
    assert names(q=f"volumeSnapshotRefs.volumeUuid={root}", sort="name") == [
        "alpha",
        "beta",
        "gamma",
    ]
    assert names(q=["volumeSnapshotRefs.deviceId>2"]) == []
    root_snapshot = made[0]["volumeSnapshotRefs"][0]["volumeSnapshotUuid"]
    assert names(q=f"volumeSnapshotRefs.volumeSnapshotUuid={root_snapshot}") == ["alpha"]
    assert names(q="description is null", limit=0) == []
    assert api.call("GET", GROUPS, params={"count": "true"}).json() == {"total": 3}
    reply = api.call("GET", GROUPS, params={"replyWithCount": "true", "limit": 1}).json()
    assert reply["total"] == 3 and len(reply["inventories"]) == 1
    only = api.call("GET", GROUPS, params={"fields": "uuid,name", "q": "name=beta"}).json()
    assert only == {"inventories": [{"uuid": made[1]["uuid"], "name": "beta"}]}


def test_get_by_uuid_answers_inventories(api: Api) -> None:
    group = api.create()
    response = api.call("GET", f"{GROUPS}/{group['uuid']}")
    assert response.json() == {"inventories": [group]}
    assert api.call("GET", f"{GROUPS}/{'9' * 32}").json() == {"inventories": []}


def test_update(api: Api) -> None:
    group = api.create()
    path = f"{GROUPS}/{group['uuid']}/actions"
    done = api.wait(api.call("PUT", path, json={"updateVolumeSnapshotGroup": {"name": "new"}}))
    assert done.status_code == 200
    assert done.json()["inventory"]["name"] == "new"
    done = api.wait(
        api.call("PUT", path, json={"updateVolumeSnapshotGroup": {"description": "why"}})
    )
    assert done.json()["inventory"] | {"lastOpDate": None} == group | {
        "name": "new",
        "description": "why",
        "lastOpDate": None,
    }
    response = api.call(
        "PUT", f"{GROUPS}/{'9' * 32}/actions", json={"updateVolumeSnapshotGroup": {}}
    )
    assert response.status_code == 404


def test_delete_permissive_and_enforcing(api: Api) -> None:
    first, second = api.create("g1"), api.create("g2")
    done = api.wait(api.call("DELETE", f"{GROUPS}/{first['uuid']}"))  # Permissive by default
    assert done.status_code == 200
    results = done.json()["results"]
    assert [r["success"] for r in results] == [True, True, True]
    assert "error" not in done.json()
    path = f"{GROUPS}/{second['uuid']}"
    done = api.wait(api.call("DELETE", path, params={"deleteMode": "Enforcing"}))
    assert done.status_code == 200
    assert api.engine.list_groups() == []
    # Deleting what is gone succeeds with no results, as in ZStack.
    done = api.wait(api.call("DELETE", path, params={"deleteMode": "Permissive"}))
    assert (done.status_code, done.json()) == (200, {"results": []})


def test_a_permissive_delete_that_must_refuse_is_503_and_keeps_the_group(api: Api) -> None:
    group = api.create()
    # A snapshot's file is gone: Permissive checks first and refuses, changing nothing.
    del api.images.images[group["volumeSnapshotRefs"][1]["volumeSnapshotInstallPath"]]
    done = api.wait(api.call("DELETE", f"{GROUPS}/{group['uuid']}"))
    assert done.status_code == 503
    assert done.json()["error"]["code"] == "SYS.1006"
    assert [g.uuid for g in api.engine.list_groups()] == [group["uuid"]]


def test_a_failed_merge_is_503_with_every_result(api: Api) -> None:
    group = api.create()
    api.hv.fail["block_commit"] = HypervisorError("commit failed")
    done = api.wait(
        api.call("DELETE", f"{GROUPS}/{group['uuid']}", params={"deleteMode": "Enforcing"})
    )
    assert done.status_code == 503
    document = done.json()
    assert document["error"]["code"] == "VOLUME_SNAPSHOT.1002"
    assert len(document["results"]) == 3 and not any(r["success"] for r in document["results"])


def test_availability_ungroup_and_revert(api: Api) -> None:
    group = api.create()
    response = api.call(
        "GET", "/volume-snapshots/groups/availabilities", params={"uuids": group["uuid"]}
    )
    assert response.status_code == 200
    assert response.json() == {
        "results": [{"uuid": group["uuid"], "available": True, "reason": None}]
    }
    # A running VM cannot be reverted: the job fails, the group stays.
    path = f"{GROUPS}/{group['uuid']}/actions"
    done = api.wait(api.call("PUT", path, json={"revertVmFromSnapshotGroup": {}}))
    assert done.status_code == 503 and done.json()["error"]["code"] == "SYS.1006"
    api.hv.domains[VM].state = VmState.STOPPED
    done = api.wait(api.call("PUT", path, json={"revertVmFromSnapshotGroup": {}}))
    assert done.status_code == 200, done.text
    assert all(r["success"] for r in done.json()["results"])
    done = api.wait(api.call("DELETE", f"/volume-snapshots/ungroup/{group['uuid']}"))
    assert done.status_code == 200 and done.json()["inventory"]["uuid"] == group["uuid"]
    assert group["uuid"] not in {g.uuid for g in api.engine.list_groups()}


def test_another_hosts_vm_is_409_and_untouched(api: Api) -> None:
    group = api.create()
    with api.engine.db.transaction() as session:
        repo = Repo(session)
        for volume in repo.volumes_of_vm(VM):
            volume.host = "other-host"
            repo.add(volume)
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("DELETE", f"{GROUPS}/{group['uuid']}", {}),
        ("PUT", f"{GROUPS}/{group['uuid']}/actions", {"json": {"updateVolumeSnapshotGroup": {}}}),
        ("DELETE", f"/volume-snapshots/ungroup/{group['uuid']}", {}),
        (
            "POST",
            GROUPS,
            {"json": {"params": {"rootVolumeUuid": api.root_volume_row(), "name": "g"}}},
        ),
    ]
    for method, path, kwargs in calls:
        response = api.call(method, path, **kwargs)
        assert response.status_code == 409, (method, path, response.text)
        assert response.json()["error"]["code"] == "SYS.1006"
        assert "other-host" in response.json()["error"]["details"]
    assert [g.uuid for g in api.engine.list_groups()] == [group["uuid"]]
