"""The OpenAPI document describes the read-only resources precisely: QueryVolume,
QueryVmInstance, QueryVolumeSnapshot and QueryVolumeSnapshotTree answers validate
against their own documented schemas, which refuse a field of the wrong type."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema_rs
import pytest

from snapgroup.domain.models import VmState
from snapgroup.testing.fakes import lab_domain
from tests.rest.conftest import PREFIX, VM, Api

ROUTES = {
    "/volumes": "VolumeQueryDocument",
    "/vm-instances": "VmQueryDocument",
    "/volume-snapshots": "SnapshotQueryDocument",
    "/volume-snapshots/trees": "TreeQueryDocument",
}


def _validator(api: Api, path: str) -> Any:
    document = api.client.get(f"{PREFIX}/openapi.json").json()
    response = document["paths"][f"{PREFIX}{path}"]["get"]["responses"]["200"]
    schema = response["content"]["application/json"]["schema"]
    assert schema == {"$ref": f"#/components/schemas/{ROUTES[path]}"}  # its own model
    return jsonschema_rs.Draft202012Validator({**schema, "components": document["components"]})


def _answer(api: Api, path: str, **params: Any) -> dict[str, Any]:
    response = api.call("GET", path, params=params)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


@pytest.fixture
def reverted(api: Api) -> Api:
    """Two groups, the root volume reverted to the first, a third group; and a VM
    libvirt has that nothing recorded."""
    api.create("one")
    api.create("two")
    root = api.root_volume()
    snaps = _answer(api, "/volume-snapshots", q=f"volumeUuid={root}", sort="createDate")
    api.hv.domains[VM].state = VmState.STOPPED
    path = f"/volume-snapshots/{snaps['inventories'][0]['uuid']}/actions"
    done = api.wait(api.call("PUT", path, json={"revertVolumeFromSnapshot": {}}))
    assert done.status_code == 200, done.text
    api.create("three")
    lab_domain(api.hv, uuid="b" * 32, name="vm2", directory="/lab2")
    return api


@pytest.mark.parametrize("path", list(ROUTES))
def test_answers_hold_to_their_documented_schema(reverted: Api, path: str) -> None:
    validator = _validator(reverted, path)
    answer = _answer(reverted, path)
    assert answer["inventories"]
    validator.validate(answer)
    validator.validate(_answer(reverted, path, count="true"))
    if path != "/volume-snapshots/trees":  # fields= leaves only the fields named
        validator.validate(_answer(reverted, path, fields="uuid", replyWithCount="true"))
    # Precise: a field of the wrong type is refused.
    wrong = copy.deepcopy(answer)
    wrong["inventories"][0]["uuid"] = 42
    with pytest.raises(jsonschema_rs.ValidationError):
        validator.validate(wrong)


def test_the_schemas_name_the_fields_a_client_reads(api: Api) -> None:
    schemas = api.client.get(f"{PREFIX}/openapi.json").json()["components"]["schemas"]
    vm = schemas["VmInstanceInventory"]["properties"]
    assert {"rootVolumeUuid", "allVolumes", "state"} <= set(vm)
    assert vm["allVolumes"]["items"] == {"$ref": "#/components/schemas/VolumeInventory"}
    snapshot = schemas["VolumeSnapshotInventory"]["properties"]
    assert snapshot["latest"]["type"] == "boolean"
    assert snapshot["status"]["enum"] == ["Ready", "Changed"]
    leaf = schemas["SnapshotLeaf"]["properties"]
    assert leaf["children"]["items"] == {"$ref": "#/components/schemas/SnapshotLeaf"}
    tree = schemas["VolumeSnapshotTreeInventory"]
    assert {"uuid", "volumeUuid", "current", "tree"} <= set(tree["required"])
