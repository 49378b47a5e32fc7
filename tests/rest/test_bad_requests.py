"""Malformed requests: the seed's error shape, a fitting status, nothing done. And the
one mapping from error to HTTP status."""

from __future__ import annotations

from typing import Any

import pytest

from snapgroup.domain.errors import ALL_ERRORS, InvalidArgument, SnapgroupError
from snapgroup.rest.status import http_status
from tests.rest.conftest import PREFIX, Api

GROUPS = "/volume-snapshots/group"
ERROR_KEYS = {"code", "description", "details", "elaboration", "opaque", "cause"}


def _refused(api: Api, response: Any, status: int = 400, code: str = "SYS.1007") -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == ERROR_KEYS
    assert error["code"] == code
    assert api.engine.list_groups() == []


@pytest.mark.parametrize(
    "body",
    [
        {},  # no params
        {"systemTags": []},
        {"params": None},
        {"params": "g1"},
        {"params": {"name": "g1"}},  # no rootVolumeUuid
        {"params": {"rootVolumeUuid": "ROOT"}},  # no name
        {"params": {"rootVolumeUuid": "ROOT", "name": 123}},
        {"params": {"rootVolumeUuid": 7, "name": "g1"}},
        {"params": {"rootVolumeUuid": "ROOT", "name": ["g1"]}},
        {"params": {"rootVolumeUuid": "ROOT", "name": "g1", "description": False}},
        {"params": {"rootVolumeUuid": "ROOT", "name": "g1"}, "systemTags": "x"},
        {"params": {"rootVolumeUuid": "ROOT", "name": "x" * 256}},
        {"params": {"rootVolumeUuid": "ROOT", "name": ""}},
        {"params": {"rootVolumeUuid": "ROOT", "name": "   "}},
        {"params": {"rootVolumeUuid": "ROOT", "name": "tab\there"}},
        {"params": {"rootVolumeUuid": "ROOT", "name": "g", "description": "d" * 2049}},
        {"params": {"rootVolumeUuid": "not-a-uuid", "name": "g1"}},
        {"params": {"rootVolumeUuid": "ROOT", "name": "g1", "resourceUuid": "zz"}},
        [],
        "params",
    ],
)
def test_malformed_create_bodies_are_400(api: Api, body: Any) -> None:
    root = api.root_volume()
    if isinstance(body, dict) and isinstance(body.get("params"), dict):
        params = body["params"]
        if params.get("rootVolumeUuid") == "ROOT":
            body = {**body, "params": {**params, "rootVolumeUuid": root}}
    _refused(api, api.call("POST", GROUPS, json=body))


@pytest.mark.parametrize("content", [b"", b"{", b"null", b"\xff\xfe", b'{"params": {"name": }}'])
def test_bodies_that_are_not_json_objects_are_400(api: Api, content: bytes) -> None:
    headers = {"Content-Type": "application/json"}
    _refused(api, api.call("POST", GROUPS, content=content, headers=headers))


def test_a_name_of_255_characters_is_fine(api: Api) -> None:
    assert api.create("n" * 255)["name"] == "n" * 255


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"updateVolumeSnapshotGroup": {"name": "a"}, "revertVmFromSnapshotGroup": {}},
        {"updateVolumeSnapshotGroup": {"name": 5}},
        {"updateVolumeSnapshotGroup": {"name": "x" * 256}},
        {"updateVolumeSnapshotGroup": "rename"},
        {"somethingElse": {}},
    ],
)
def test_malformed_actions_are_400(api: Api, body: Any) -> None:
    _refused(api, api.call("PUT", f"{GROUPS}/{'a' * 32}/actions", json=body))


@pytest.mark.parametrize(
    ("method", "path", "params"),
    [
        ("DELETE", f"{GROUPS}/not-a-uuid", {}),
        ("DELETE", f"{GROUPS}/{'a' * 32}", {"deleteMode": "Gently"}),
        ("GET", f"{GROUPS}/xyz", {}),
        ("GET", GROUPS, {"q": "name"}),
        ("GET", GROUPS, {"q": "colour=red"}),
        ("GET", GROUPS, {"q": "snapshotCount>many"}),
        ("GET", GROUPS, {"limit": "ten"}),
        ("GET", GROUPS, {"start": "-1"}),
        ("GET", GROUPS, {"sort": "+colour"}),
        ("GET", GROUPS, {"fields": "colour"}),
        ("GET", "/volume-snapshots/groups/availabilities", {}),
        ("GET", "/volume-snapshots/groups/availabilities", {"uuids": ","}),
        ("DELETE", "/volume-snapshots/ungroup/zz", {}),
    ],
)
def test_malformed_urls_are_400(api: Api, method: str, path: str, params: dict[str, str]) -> None:
    _refused(api, api.call(method, path, params=params))


def test_unknown_things_are_404_in_the_seed_shape(api: Api) -> None:
    _refused(api, api.call("GET", "/no-such-api"), 404, "SYS.1003")
    path = f"{GROUPS}/{'a' * 32}/actions"
    _refused(api, api.call("PUT", path, json={"updateVolumeSnapshotGroup": {}}), 404, "SYS.1003")
    response = api.call(
        "GET", "/volume-snapshots/groups/availabilities", params={"uuids": "a" * 32}
    )
    _refused(api, response, 404, "SYS.1003")
    _refused(api, api.call("DELETE", f"/volume-snapshots/ungroup/{'a' * 32}"), 404, "SYS.1003")


def test_a_wrong_method_is_405_in_the_seed_shape(api: Api) -> None:
    response = api.call("PATCH", GROUPS, json={})
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "SYS.1007"
    assert response.headers["allow"] == "GET, POST"  # every route of the path, per RFC 9110


def test_every_error_has_a_status_and_none_is_500() -> None:
    statuses = {e.code: http_status(e("x")) for e in ALL_ERRORS}
    assert statuses["SYS.1007"] == 400
    assert statuses["SYS.1003"] == 404
    assert statuses["SYS.1011"] == 409
    assert statuses["ID.1000"] == statuses["ID.1001"] == 401
    assert all(400 <= s < 500 or s == 503 for s in statuses.values())

    class Special(InvalidArgument):
        pass

    assert http_status(Special("x")) == 400  # by family
    assert http_status(SnapgroupError("x")) == 503


def test_context_path_is_configurable(tmp_path: Any) -> None:
    from snapgroup.store.db import Database
    from tests.rest.conftest import Clock, build

    db = Database(f"sqlite:///{tmp_path / 's.db'}")
    api = build(db, Clock(), context_path="/")
    with api.client:
        assert api.client.get("/v1/openapi.json").status_code == 200
        body = {"logInByAccount": {"accountName": "admin", "password": "0" * 128}}
        assert api.client.put("/v1/accounts/login", json=body).status_code == 401
        assert api.client.get(f"{PREFIX}/openapi.json").status_code == 401  # not there
    db.dispose()
