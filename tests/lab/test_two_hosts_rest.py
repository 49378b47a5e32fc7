"""Every host answers for the cluster, for real: two `serve` processes on one
PostgreSQL store, host a's on the system libvirtd, host b's on a second libvirtd in a
mount namespace of its own (tests/lab/second_host.py), each with its own SNAPGROUP_HOST
and libvirt URI. A REST client that talks only to host a's server operates on a VM that
runs on host b. Simulated: the hosts' names and the network (one machine, loopback)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from snapgroup.rest.auth import Accounts, sha512_hex
from snapgroup.store.db import Database
from snapgroup.testing.labvm import LabVm, create_lab_vm, lab_directory
from tests.lab.second_host import ROOT, address, host_b, serving, snapgroup_env
from tests.lab.tools import sh
from tests.pgtools import empty_all_tables

pytestmark = pytest.mark.lab

A = "qemu:///system"
LEASE = 3.0  # seconds: a host's lease, short for the test
PASSWORD = "s3cret"


@pytest.fixture(scope="module")
def b_uri(pg_url: str) -> Iterator[str]:
    with host_b(pg_url) as uri:
        yield uri


@pytest.fixture
def store(pg_store: Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[Database]:
    monkeypatch.setenv("SNAPGROUP_LEASE_SECONDS", str(LEASE))
    Accounts(pg_store, cost=1 << 8).set_password("admin", PASSWORD)
    yield pg_store
    empty_all_tables(pg_store)


@pytest.fixture
def vm_on_b(b_uri: str) -> Iterator[LabVm]:
    """A VM defined and running on host b only."""
    name = f"sg-lab-2hr-{uuid.uuid4().hex[:8]}"
    made = create_lab_vm(lab_directory(name), name=name, start=True, uri=b_uri)
    try:
        yield made
    finally:
        sh("virsh", "-c", b_uri, "destroy", name, check=False)
        sh("virsh", "-c", b_uri, "undefine", name, check=False)
        made.destroy()


def _snapgroup(pg_url: str, host: str, uri: str, *argv: str) -> Any:
    """A snapgroup command run on host `host`, its --json document."""
    done = sh_env(snapgroup_env(host, uri), "--db", pg_url, "--json", *argv)
    return json.loads(done)


def sh_env(env: dict[str, str], *argv: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "snapgroup", *argv],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def _login(client: httpx.Client) -> None:
    body = {"logInByAccount": {"accountName": "admin", "password": sha512_hex(PASSWORD)}}
    answer = client.put("/v1/accounts/login", json=body)
    assert answer.status_code == 200, answer.text
    client.headers["Authorization"] = f"OAuth {answer.json()['inventory']['uuid']}"


def _finished(client: httpx.Client, location: str, *, within: float = 120.0) -> httpx.Response:
    assert location.startswith(str(client.base_url)), location  # polled at a, too
    deadline = time.monotonic() + within
    while (polled := client.get(location)).status_code == 202:
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.2)
    return polled


def _domblklist(uri: str, vm: str) -> dict[str, str]:
    out = sh("virsh", "-q", "-c", uri, "domblklist", vm).stdout
    rows = [line.split(None, 1) for line in out.splitlines() if line.strip()]
    return {target: source.strip() for target, source in rows}


def _chain(path: str) -> list[str]:
    out = sh("qemu-img", "info", "-U", "--backing-chain", "--output=json", path).stdout
    return [layer["filename"] for layer in json.loads(out)]


def test_a_client_of_host_a_creates_a_group_of_a_vm_running_on_host_b(
    store: Database, pg_url: str, b_uri: str, vm_on_b: LabVm, tmp_path: Path
) -> None:
    vm = vm_on_b
    # b's operator records the VM's volumes (any command on b would).
    _snapgroup(pg_url, "hostb", b_uri, "volumes", "--vm", vm.name)
    with (
        serving(store, pg_url, "hostb", b_uri, log=tmp_path / "serve-b.log"),
        serving(store, pg_url, "hosta", A, log=tmp_path / "serve-a.log"),
        httpx.Client(base_url=address(store, "hosta"), timeout=60) as client,
    ):
        _login(client)
        volumes = client.get("/v1/volumes").json()["inventories"]
        root = next(
            v["uuid"] for v in volumes if v["vmInstanceUuid"] == vm.uuid and v["type"] == "Root"
        )
        body = {"params": {"rootVolumeUuid": root, "name": "via-a"}}
        started = client.post("/v1/volume-snapshots/group", json=body)
        assert started.status_code == 202, started.text
        polled = _finished(client, started.json()["location"])
        assert polled.status_code == 200, polled.text
        group = polled.json()["inventory"]
        # a answers for it: shown and listed
        shown = client.get(f"/v1/volume-snapshots/group/{group['uuid']}").json()
        assert [g["name"] for g in shown["inventories"]] == ["via-a"]
        listed = client.get("/v1/volume-snapshots/group").json()["inventories"]
        assert [g["uuid"] for g in listed] == [group["uuid"]]
    # The group is real on b: b's VM now runs on overlays over the group's snapshots.
    refs = {r["volumeSnapshotInstallPath"] for r in group["volumeSnapshotRefs"]}
    disks = _domblklist(b_uri, vm.name)
    backings = {_chain(path)[1] for path in disks.values() if path.endswith(".qcow2")}
    assert refs and refs <= backings, (refs, disks)
    assert sh("virsh", "-c", A, "list", "--all", "--name").stdout.split().count(vm.name) == 0
    hosts = {h["name"]: h for h in _snapgroup(pg_url, "hosta", A, "hosts")["inventories"]}
    assert hosts["hostb"]["vmInstanceUuids"] == [vm.uuid]
    assert vm.uuid not in hosts.get("hosta", {}).get("vmInstanceUuids", [])


def test_a_request_for_host_b_while_it_does_not_serve_is_queued_and_run_when_it_does(
    store: Database, pg_url: str, b_uri: str, vm_on_b: LabVm, tmp_path: Path
) -> None:
    vm = vm_on_b
    _snapgroup(pg_url, "hostb", b_uri, "volumes", "--vm", vm.name)  # b registered, not serving
    with (
        serving(store, pg_url, "hosta", A, log=tmp_path / "serve-a.log"),
        httpx.Client(base_url=address(store, "hosta"), timeout=60) as client,
    ):
        _login(client)
        volumes = client.get("/v1/volumes").json()["inventories"]
        root = next(
            v["uuid"] for v in volumes if v["vmInstanceUuid"] == vm.uuid and v["type"] == "Root"
        )
        body = {"params": {"rootVolumeUuid": root, "name": "queued-for-b"}}
        started = client.post("/v1/volume-snapshots/group", json=body)
        assert started.status_code == 202, started.text
        location = started.json()["location"]
        waiting = client.get(location)
        assert waiting.status_code == 202 and waiting.headers["X-Job-State"] == "Waiting"
        assert client.get("/v1/volume-snapshots/group").json()["inventories"] == []
        with serving(store, pg_url, "hostb", b_uri, log=tmp_path / "serve-b.log"):
            polled = _finished(client, location)  # b's serve picks it up
        assert polled.status_code == 200, polled.text
        group = polled.json()["inventory"]
    refs = {r["volumeSnapshotInstallPath"] for r in group["volumeSnapshotRefs"]}
    disks = _domblklist(b_uri, vm.name)
    assert refs and refs <= {_chain(p)[1] for p in disks.values() if p.endswith(".qcow2")}
