"""End to end over HTTP: a real `snapgroup serve` process on 127.0.0.1 (a free port),
a real lab VM on libvirtd + QEMU, driven as a ZStack client drives it: login, create
with 202 + polling, queries with conditions, update, delete Permissive and Enforcing,
auth failures, malformed bodies, and concurrent requests for the same VM. The server's
store is SQLite, and PostgreSQL (the same server, `--db postgresql://...`)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from snapgroup.api import open_engine
from snapgroup.testing.labvm import LabVm
from tests.lab.tools import backing_chain, domblklist
from tests.pgtools import configured_url, private_database

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "lab-password"
GROUPS = "/volume-snapshots/group"
CONCURRENT = 4
JOB_TIMEOUT = 120.0  # seconds a create or delete of the lab VM may take (TCG included)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _snapgroup(db: str, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "snapgroup", "--db", db, *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, labdir: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{labdir / 'rest.db'}"
        return
    request.getfixturevalue("pg_url")  # skips, or fails under CI, without a server
    base = configured_url()
    assert base is not None
    yield from private_database(base)  # its own: the unit tests' is emptied per test


@dataclass
class Client:
    http: httpx.Client
    session: str = ""

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"OAuth {self.session}"} if self.session else {}

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self.auth, **kwargs.pop("headers", {})}
        return self.http.request(method, f"/zstack/v1{path}", headers=headers, **kwargs)

    def poll(self, accepted: httpx.Response) -> httpx.Response:
        """ZStack's protocol: 202 + {"location"}; GET it until it is not 202."""
        assert accepted.status_code == 202, accepted.text
        location = accepted.json()["location"]
        assert location.startswith(str(self.http.base_url).rstrip("/") + "/zstack/v1/api-jobs/")
        deadline = time.monotonic() + JOB_TIMEOUT
        while True:
            response = self.http.get(location, headers=self.auth)
            if response.status_code != 202:
                return response
            assert time.monotonic() < deadline, "job did not finish"
            time.sleep(0.1)


def start_serve(
    db_url: str, *, timeout: float, stdout: int = subprocess.PIPE, extra: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[str], httpx.Client]:
    """`snapgroup serve` on a free port of 127.0.0.1, once it answers (its OpenAPI
    document), and a client for it whose requests wait up to `timeout` seconds."""
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "snapgroup",
            "--db",
            db_url,
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            *extra,
        ],
        cwd=ROOT,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=timeout)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if http.get("/zstack/v1/openapi.json").status_code == 200:
                    return proc, http
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
    except BaseException:
        http.close()
        proc.kill()  # a no-op once it has exited
        proc.communicate()
        raise


def stop_serve(proc: subprocess.Popen[str]) -> None:
    """SIGTERM (uvicorn lets running jobs finish), SIGKILL after a minute; a server
    that printed a traceback fails the test."""
    proc.terminate()
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, stderr = proc.communicate()
    assert "Traceback" not in stderr, stderr


@pytest.fixture
def server(db_url: str) -> Iterator[Client]:
    _snapgroup(db_url, "account", "set-password", "admin", "--password-stdin", stdin=PASSWORD)
    proc, http = start_serve(db_url, timeout=30)
    try:
        yield Client(http)
    finally:
        http.close()
        stop_serve(proc)


def _login(client: Client, password: str = PASSWORD) -> httpx.Response:
    digest = hashlib.sha512(password.encode()).hexdigest()
    body = {"logInByAccount": {"accountName": "admin", "password": digest}}
    return client.http.put("/zstack/v1/accounts/login", json=body)


def test_a_zstack_client_drives_a_real_vm(server: Client, db_url: str, running_vm: LabVm) -> None:
    client = server
    # -- who may call -----------------------------------------------------------------
    assert _login(client, "wrong").status_code == 401
    assert client.call("GET", GROUPS).status_code == 401  # no session yet
    login = _login(client)
    assert login.status_code == 200
    client.session = login.json()["inventory"]["uuid"]
    bogus = {"Authorization": "OAuth " + "0" * 32}
    assert client.call("GET", GROUPS, headers=bogus).status_code == 401

    # The volumes are recorded (as `snapgroup volumes` does): the seed creates by root volume.
    views = json.loads(_snapgroup(db_url, "--json", "volumes", "--vm", running_vm.name))
    root = next(v["volumeUuid"] for v in views["inventories"] if v["volumeType"] == "Root")
    before = domblklist(running_vm.name)

    # -- malformed bodies: 400, nothing done -------------------------------------------
    for body in (
        {"systemTags": []},
        {"params": {"rootVolumeUuid": root, "name": 7}},
        {"params": {"rootVolumeUuid": root, "name": "n" * 256}},
    ):
        response = client.call("POST", GROUPS, json=body)
        assert response.status_code == 400 and response.json()["error"]["code"] == "SYS.1007"
    assert (
        client.call("POST", GROUPS, json={"params": {"name": "x"}}, headers=bogus).status_code
        == 401
    )
    assert domblklist(running_vm.name) == before

    # -- create, as a ZStack client: 202, then poll ------------------------------------
    job = "1234567890abcdef1234567890abcdef"
    body = {"params": {"rootVolumeUuid": root, "name": "first"}, "systemTags": [], "userTags": []}
    accepted = client.call("POST", GROUPS, json=body, headers={"X-Job-UUID": job})
    assert accepted.json()["location"].endswith(f"/api-jobs/{job}")
    done = client.poll(accepted)
    assert done.status_code == 200, done.text
    first = done.json()["inventory"]
    assert first["vmInstanceUuid"] == running_vm.uuid and first["snapshotCount"] == 3
    after = domblklist(running_vm.name)
    for ref in first["volumeSnapshotRefs"]:
        target = next(t for t, path in before.items() if path == ref["volumeSnapshotInstallPath"])
        assert backing_chain(after[target])[1] == ref["volumeSnapshotInstallPath"]
    second = client.poll(
        client.call("POST", GROUPS, json={"params": {"rootVolumeUuid": root, "name": "second"}})
    ).json()["inventory"]

    # -- queries -------------------------------------------------------------------------
    def names(**params: Any) -> list[str]:
        response = client.call("GET", GROUPS, params=params)
        assert response.status_code == 200, response.text
        return [inv["name"] for inv in response.json()["inventories"]]

    assert names(q="name=first") == ["first"]
    assert names(q=f"vmInstanceUuid={running_vm.uuid}", sort="-createDate") == ["second", "first"]
    assert names(q=["name~=%st", "snapshotCount=3"], sort="+name") == ["first"]
    assert client.call("GET", GROUPS, params={"count": "true"}).json() == {"total": 2}
    assert (
        client.call("GET", f"{GROUPS}/{first['uuid']}").json()["inventories"][0]["name"] == "first"
    )

    # -- update ----------------------------------------------------------------------------
    path = f"{GROUPS}/{first['uuid']}/actions"
    done = client.poll(
        client.call("PUT", path, json={"updateVolumeSnapshotGroup": {"name": "one"}})
    )
    assert done.status_code == 200 and done.json()["inventory"]["name"] == "one"

    # -- concurrent requests for the same VM: serialised, never interleaved ------------------
    def create(n: int) -> httpx.Response:
        response = client.call(
            "POST", GROUPS, json={"params": {"rootVolumeUuid": root, "name": f"c{n}"}}
        )
        return client.poll(response) if response.status_code == 202 else response

    with ThreadPoolExecutor(CONCURRENT) as pool:
        outcomes = list(pool.map(create, range(CONCURRENT)))
    made = [r.json()["inventory"] for r in outcomes if r.status_code == 200]
    refused = [r for r in outcomes if r.status_code != 200]
    assert made, [r.text for r in outcomes]
    for response in refused:  # busy: at once (409) or when its job met the lock (503)
        assert response.status_code in (409, 503), response.text
        assert response.json()["error"]["code"] == "SYS.1011"
    assert names(q="name~=c%", sort="name") == sorted(g["name"] for g in made)

    # -- delete: Permissive, then Enforcing ----------------------------------------------------
    done = client.poll(client.call("DELETE", f"{GROUPS}/{first['uuid']}"))
    assert done.status_code == 200, done.text
    assert all(r["success"] for r in done.json()["results"])
    for group in [second, *made]:
        response = client.call(
            "DELETE", f"{GROUPS}/{group['uuid']}", params={"deleteMode": "Enforcing"}
        )
        done = client.poll(response)
        assert done.status_code == 200, done.text
        assert all(r["success"] for r in done.json()["results"])
    assert names() == []
    # Every merge done: each disk is back on its original file, and the metadata agrees
    # with libvirt and qemu-img.
    assert domblklist(running_vm.name) == before
    engine = open_engine(db=db_url)
    try:
        assert engine.verify(vm=running_vm.name) == []
    finally:
        engine.db.dispose()

    # -- logout ------------------------------------------------------------------------------
    assert client.http.delete(f"/zstack/v1/accounts/sessions/{client.session}").status_code == 200
    assert client.call("GET", GROUPS).status_code == 401
