"""GetVersion (no session) and RenewSession, as ZStack's SDKs call them."""

from __future__ import annotations

from snapgroup.rest.routes.management import version
from tests.rest.conftest import PREFIX, Api


def test_get_version_needs_no_session(api: Api) -> None:
    response = api.client.put(f"{PREFIX}/management-nodes/actions", json={"getVersion": {}})
    assert response.status_code == 200
    assert response.json() == {"version": version()} and version()
    malformed = api.client.put(f"{PREFIX}/management-nodes/actions", json={"other": {}})
    assert malformed.status_code == 400


def test_renew_session_moves_its_expiry(api: Api) -> None:
    path = f"/accounts/sessions/{api.session}/renew"
    api.clock.advance(7000)  # 200 s left of the 7200
    renewed = api.call("PUT", path, json={"renewSession": {"duration": 3600}})
    assert renewed.status_code == 200, renewed.text
    assert renewed.json()["inventory"]["uuid"] == api.session
    api.clock.advance(3000)  # past the old expiry, inside the new one
    assert api.call("GET", "/volume-snapshots/group").status_code == 200
    api.clock.advance(601)
    assert api.call("GET", "/volume-snapshots/group").status_code == 401


def test_renew_refuses_a_bad_duration_or_a_dead_session(api: Api) -> None:
    path = f"/accounts/sessions/{api.session}/renew"
    assert api.call("PUT", path, json={"renewSession": {"duration": 5}}).status_code == 400
    assert api.call("PUT", path, json={"renewSession": {}}).status_code == 200
    other = "0" * 32
    response = api.call("PUT", f"/accounts/sessions/{other}/renew", json={"renewSession": {}})
    assert response.status_code == 401 and response.json()["error"]["code"] == "ID.1001"
