"""Who may call: ZStack's login with the SHA-512 digest, `Authorization: OAuth
<session>` on every call, expiry and logout; without a live session, 401 and nothing
done."""

from __future__ import annotations

from typing import Any

import pytest
from sqlmodel import select

from snapgroup.rest.auth import Accounts, digest_matches, hash_digest, sha512_hex
from snapgroup.store.db import Database
from snapgroup.store.tables import AccountRow
from tests.pgtools import empty_all_tables
from tests.rest.conftest import CHEAP, PASSWORD, PREFIX, Api, Clock, build

GROUPS = "/volume-snapshots/group"


def _groups(api: Api) -> int:
    return len(api.engine.list_groups())


def test_login_answers_zstacks_session_inventory(api: Api) -> None:
    response = api.login()
    assert response.status_code == 200
    inventory = response.json()["inventory"]
    assert set(inventory) == {"uuid", "accountUuid", "userUuid", "expiredDate", "createDate"}
    assert len(inventory["uuid"]) == 32
    assert inventory["createDate"] == "Nov 26, 2026 10:00:00 PM"
    assert inventory["expiredDate"] == "Nov 27, 2026 12:00:00 AM"  # 7200 s later


@pytest.mark.parametrize(("name", "password"), [("admin", "wrong"), ("nobody", PASSWORD)])
def test_a_wrong_login_is_401_id_1000(api: Api, name: str, password: str) -> None:
    response = api.login(name, password)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "ID.1000"


def test_the_password_is_sent_as_its_sha512_digest_never_plain(api: Api) -> None:
    body = {"logInByAccount": {"accountName": "admin", "password": PASSWORD}}
    assert api.client.put(f"{PREFIX}/accounts/login", json=body).status_code == 401


def test_the_store_holds_a_salted_hash_only(api: Api) -> None:
    with api.engine.db.transaction() as session:
        stored = session.exec(select(AccountRow.password_hash)).one()
    assert PASSWORD not in stored and sha512_hex(PASSWORD) not in stored
    assert stored.startswith("scrypt$")
    assert digest_matches(sha512_hex(PASSWORD).upper(), stored)  # hex in any case
    assert hash_digest(sha512_hex(PASSWORD)) != stored  # salted: never the same twice


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer 0123456789abcdef0123456789abcdef"},
        {"Authorization": "OAuth"},
        {"Authorization": "OAuth 0123456789abcdef0123456789abcdef"},
        {"Authorization": "OAuth not-a-uuid"},
    ],
    ids=["missing", "wrong-scheme", "empty", "unknown", "malformed"],
)
def test_no_valid_session_is_401_and_nothing_is_done(api: Api, headers: dict[str, str]) -> None:
    body = {"params": {"rootVolumeUuid": api.root_volume(), "name": "g"}}
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", GROUPS, {"json": body}),
        ("GET", GROUPS, {}),
        ("DELETE", f"{GROUPS}/{'b' * 32}", {}),
        ("GET", f"/api-jobs/{'c' * 32}", {}),
        ("POST", GROUPS, {"content": b"{not json"}),  # refused before the body is read
    ]
    for method, path, kwargs in calls:
        response = api.client.request(method, f"{PREFIX}{path}", headers=headers, **kwargs)
        assert response.status_code == 401, (method, path)
        assert response.json()["error"]["code"] == "ID.1001"
        assert response.headers["www-authenticate"] == "OAuth"
    assert _groups(api) == 0


def test_an_expired_session_is_401(api: Api) -> None:
    assert api.call("GET", GROUPS).status_code == 200
    api.clock.advance(7200)
    response = api.call("GET", GROUPS)
    assert response.status_code == 401
    assert "expired" in response.json()["error"]["details"]


def test_logout_ends_the_session(api: Api) -> None:
    response = api.client.get(f"{PREFIX}/accounts/sessions/{api.session}/valid")
    assert response.json() == {"validSession": True}
    assert api.client.delete(f"{PREFIX}/accounts/sessions/{api.session}").status_code == 200
    assert api.call("GET", GROUPS).status_code == 401
    response = api.client.get(f"{PREFIX}/accounts/sessions/{api.session}/valid")
    assert response.json() == {"validSession": False}
    # Idempotent, as a logout of an unknown session is.
    assert api.client.delete(f"{PREFIX}/accounts/sessions/{api.session}").status_code == 200


def test_a_new_password_ends_the_accounts_sessions(api: Api) -> None:
    assert Accounts(api.engine.db, cost=CHEAP).set_password("admin", "another") is False
    assert api.call("GET", GROUPS).status_code == 401
    assert api.login("admin", "another").status_code == 200
    assert api.login("admin", PASSWORD).status_code == 401


def test_accounts_are_listed_and_deleted(api: Api) -> None:
    accounts = Accounts(api.engine.db, cost=CHEAP)
    assert accounts.set_password("ops", "pw") is True
    assert accounts.names() == ["admin", "ops"]
    accounts.delete("admin")
    assert accounts.names() == ["ops"]
    assert api.call("GET", GROUPS).status_code == 401  # its session went with it


def test_login_checks_its_body(api: Api) -> None:
    for body in [{}, {"logInByAccount": {"accountName": "admin"}}, {"logInByAccount": "x"}]:
        response = api.client.put(f"{PREFIX}/accounts/login", json=body)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "SYS.1007"


@pytest.mark.parametrize("backend", ["sqlite-file", "postgresql"])
def test_the_session_check_on_either_kind_of_store(
    backend: str, fast_dir: Any, request: pytest.FixtureRequest
) -> None:
    """A SQLite file's session check runs on the event loop (a local read), a database
    server's in a worker thread (its round trip must not block the loop): both let a
    live session through and answer 401 to a wrong one."""
    if backend == "postgresql":
        db: Database = request.getfixturevalue("pg_store")
    else:
        db = Database(f"sqlite:///{fast_dir / 'guard.db'}")
    assert db.local_reads == (backend == "sqlite-file")
    built = build(db, Clock())
    try:
        with built.client:
            response = built.login()
            assert response.status_code == 200, response.text
            built.session = response.json()["inventory"]["uuid"]
            assert built.call("GET", "/volume-snapshots/group").status_code == 200
            built.session = "0" * 32
            refused = built.call("GET", "/volume-snapshots/group")
            assert refused.status_code == 401
    finally:
        if backend == "postgresql":
            empty_all_tables(db)
        else:
            db.dispose()
