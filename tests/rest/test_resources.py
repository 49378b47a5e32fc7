"""QueryVmInstance and QueryVolume in ZStack's shapes, with the query language; and a
ZStack client's journey on them: find the VM, its root volume, create, query, renew,
version."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from snapgroup.domain.errors import HypervisorUnavailable
from snapgroup.domain.models import VmState
from snapgroup.testing.fakes import lab_domain
from tests.rest.conftest import PREFIX, VM, Api


def _get(api: Api, path: str, **params: Any) -> dict[str, Any]:
    response = api.call("GET", path, params=params)
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def test_vm_instances_as_zstack_shows_them(api: Api) -> None:
    root = api.root_volume()  # records vm1 (as `snapgroup volumes` does)
    (vm,) = _get(api, "/vm-instances")["inventories"]
    assert (vm["uuid"], vm["name"], vm["state"], vm["rootVolumeUuid"]) == (
        VM,
        "vm1",
        "Running",
        root,
    )
    assert [v["deviceId"] for v in vm["allVolumes"]] == [0, 1, 2]
    assert vm["allVolumes"][0]["type"] == "Root" and vm["hypervisorType"] == "KVM"
    assert _get(api, "/vm-instances", q="state=Stopped")["inventories"] == []
    assert _get(api, "/vm-instances", q="name~=VM%", count="true") == {"total": 1}
    api.hv.domains[VM].state = VmState.STOPPED
    assert _get(api, "/vm-instances", q="state=Stopped", fields="uuid") == {
        "inventories": [{"uuid": VM}]
    }


def test_vm_instances_are_every_vm_libvirt_has(api: Api) -> None:
    """An unrecorded VM is listed (no volumes: a GET records nothing); a recorded one
    shows its disks as discovery finds them now (a new disk recorded, as `volumes`
    does); one libvirt no longer has is Destroyed; without libvirt, the recorded ones
    are listed Unknown."""
    root = api.root_volume()  # records vm1
    other = "b" * 32
    lab_domain(api.hv, uuid=other, name="vm2", state=VmState.STOPPED, directory="/lab2")
    by_name = {v["name"]: v for v in _get(api, "/vm-instances")["inventories"]}
    assert set(by_name) == {"vm1", "vm2"}
    assert (by_name["vm2"]["uuid"], by_name["vm2"]["state"]) == (other, "Stopped")
    assert (by_name["vm2"]["rootVolumeUuid"], by_name["vm2"]["allVolumes"]) == (None, [])
    assert by_name["vm2"]["createDate"] is None
    assert [v["lastVmInstanceUuid"] for v in _get(api, "/volumes")["inventories"]] == [VM] * 3
    assert _get(api, "/vm-instances", q="rootVolumeUuid is null", fields="name") == {
        "inventories": [{"name": "vm2"}]
    }

    api.hv.images.add("/lab/disk9.qcow2", data={0: "new"})
    disks = api.hv.domains[VM].disks
    disks.append(replace(disks[-1], target="vdz", path="/lab/disk9.qcow2"))
    (vm1,) = _get(api, "/vm-instances", q="name=vm1")["inventories"]
    assert vm1["rootVolumeUuid"] == root
    assert [v["installPath"] for v in vm1["allVolumes"]][-1] == "/lab/disk9.qcow2"
    assert len(_get(api, "/volumes")["inventories"]) == 4  # recorded, as `volumes` would

    del api.hv.domains[VM]
    (gone,) = _get(api, "/vm-instances", q="name=vm1")["inventories"]
    assert (gone["state"], gone["rootVolumeUuid"], len(gone["allVolumes"])) == (
        "Destroyed",
        root,
        4,
    )
    api.hv.fail["list_vms"] = HypervisorUnavailable("libvirtd is not running")
    listed = _get(api, "/vm-instances")["inventories"]
    assert [(v["name"], v["state"]) for v in listed] == [("vm1", "Unknown")]


def test_volumes_with_conditions_sort_and_page(api: Api) -> None:
    root = api.root_volume()
    assert [v["uuid"] for v in _get(api, "/volumes", q="type=Root")["inventories"]] == [root]
    data = _get(api, "/volumes", q=["type=Data", f"vmInstanceUuid={VM}"], sort="-deviceId")
    assert [v["deviceId"] for v in data["inventories"]] == [2, 1]
    assert _get(api, "/volumes", q="deviceId>=1", count="true") == {"total": 2}
    page = _get(api, "/volumes", limit=1, start=1, replyWithCount="true")
    assert page["total"] == 3 and len(page["inventories"]) == 1
    volume = _get(api, "/volumes", q=f"uuid={root}")["inventories"][0]
    assert volume["installPath"] == "/lab/disk0.qcow2" and volume["format"] == "qcow2"
    for bad in ({"q": "colour=red"}, {"q": "deviceId=x"}, {"sort": "colour"}):
        response = api.call("GET", "/volumes", params=bad)
        assert response.status_code == 400, (bad, response.text)
    assert api.client.get(f"{PREFIX}/volumes").status_code == 401


def test_a_zstack_clients_journey(api: Api) -> None:
    api.root_volume()
    (vm,) = _get(api, "/vm-instances", q="name=vm1")["inventories"]
    body = {"params": {"rootVolumeUuid": vm["rootVolumeUuid"], "name": "journey"}}
    done = api.wait(api.call("POST", "/volume-snapshots/group", json=body))
    assert done.status_code == 200, done.text
    found = _get(api, "/volume-snapshots/group", q=f"vmInstanceUuid={vm['uuid']}")
    assert [g["name"] for g in found["inventories"]] == ["journey"]
    renewed = api.call("PUT", f"/accounts/sessions/{api.session}/renew", json={"renewSession": {}})
    assert renewed.status_code == 200
    version = api.client.put(f"{PREFIX}/management-nodes/actions", json={"getVersion": {}})
    assert version.status_code == 200 and version.json()["version"]
