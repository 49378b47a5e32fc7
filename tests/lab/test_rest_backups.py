"""Backups over HTTP on the real stack: a `snapgroup serve --backup-repo lab=DIR` process,
a running lab VM with 3 disks and written patterns. Groups are taken, exported full then
incrementally, listed, verified, restored as a new VM that starts, and pruned, all by
REST calls; every disk is checked against copies of the group's own snapshot files
(qemu-img compare) and the repository against `qemu-img info --backing-chain`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from snapgroup.testing.labvm import LabVm, create_lab_vm, lab_directory
from tests.lab.test_rest_e2e import (
    PASSWORD,
    Client,
    _login,
    _snapgroup,
    start_serve,
    stop_serve,
)
from tests.lab.tools import backing_chain, domblklist, export, same, sh, virsh, write_live

pytestmark = pytest.mark.lab
REPOS = "/snapgroup/backup-repositories"
TARGETS = ("vda", "vdb", "vdc")


@contextlib.contextmanager
def serving(db: str, repo: Path) -> Iterator[tuple[subprocess.Popen[str], Client]]:
    """`serve --backup-repo lab=REPO` on the store `db`, logged in; stopped (SIGTERM,
    no traceback allowed) when still running at the end."""
    proc, http = start_serve(db, timeout=60, extra=("--backup-repo", f"lab={repo}"))
    client = Client(http)
    try:
        login = _login(client)
        assert login.status_code == 200, login.text
        client.session = login.json()["inventory"]["uuid"]
        yield proc, client
    finally:
        http.close()
        if proc.poll() is None:
            stop_serve(proc)


@pytest.fixture
def served(labdir: Path, running_vm: LabVm) -> Iterator[tuple[Client, str, Path]]:
    """The server (SQLite), logged in; its database URL; the served repository's path."""
    db = f"sqlite:///{labdir / 'rest.db'}"
    repo = running_vm.directory / "repo"
    _snapgroup(db, "account", "set-password", "admin", "--password-stdin", stdin=PASSWORD)
    with serving(db, repo) as (_proc, client):
        yield client, db, repo


def _done(client: Client, response: Any) -> dict[str, Any]:
    finished = client.poll(response)
    assert finished.status_code == 200, finished.text
    doc: dict[str, Any] = finished.json()
    return doc


def _restore(client: Client, backup_id: str, **params: Any) -> dict[str, Any]:
    body = {"restoreBackup": params}
    path = f"{REPOS}/lab/backups/{backup_id}/actions"
    restored: dict[str, Any] = _done(client, client.call("PUT", path, json=body))["restored"]
    return restored


def test_a_client_exports_verifies_restores_and_prunes_over_rest(
    served: tuple[Client, str, Path], running_vm: LabVm
) -> None:
    client, db, repo = served
    vm = running_vm
    views = json.loads(_snapgroup(db, "--json", "volumes", "--vm", vm.name))
    root = next(v["volumeUuid"] for v in views["inventories"] if v["volumeType"] == "Root")
    groups: list[dict[str, Any]] = []
    frozen: list[dict[str, Path]] = []
    for n in range(2):
        for disk in range(3):
            write_live(vm.name, disk, 0x21 + 0x10 * n + disk, n)
        body = {"params": {"rootVolumeUuid": root, "name": f"g{n}"}}
        group = _done(client, client.call("POST", "/volume-snapshots/group", json=body))
        groups.append(group["inventory"])
        refs = sorted(group["inventory"]["volumeSnapshotRefs"], key=lambda r: r["deviceId"])
        keep = vm.directory / f"frozen{n}"
        keep.mkdir()
        frozen.append(
            {
                t: export(r["volumeSnapshotInstallPath"], keep / f"{t}.qcow2")
                for t, r in zip(TARGETS, refs, strict=True)
            }
        )

    listed = client.call("GET", REPOS).json()["inventories"]
    assert listed == [{"name": "lab", "path": str(repo)}]
    backups = []
    for group in groups:
        body = {"params": {"groupUuid": group["uuid"]}}
        backups.append(
            _done(client, client.call("POST", f"{REPOS}/lab/backups", json=body))["backup"]
        )
    b0, b1 = backups
    assert b0["full"] and not b1["full"]
    assert {d["baseBackupId"] for d in b1["disks"]} == {b0["backupId"]}
    assert all(d["bytesWritten"] < 4 << 20 for d in b1["disks"])  # 1 MiB changed per disk
    for d, target in zip(b1["disks"], TARGETS, strict=True):
        top = repo / vm.uuid / b1["backupId"] / f"{d['volumeUuid']}.qcow2"
        # The increment's backing file is the full backup's file, by a relative name.
        base = os.path.normpath(backing_chain(str(top))[1])
        assert base == str(repo / vm.uuid / b0["backupId"] / top.name)
        assert same(top, frozen[1][target])
    assert [
        b["backupId"] for b in client.call("GET", f"{REPOS}/lab/backups").json()["backups"]
    ] == [
        b0["backupId"],
        b1["backupId"],
    ]
    report = _done(client, client.call("PUT", f"{REPOS}/lab/actions", json={"verifyBackups": {}}))
    assert report["clean"] and set(report["checked"]) == {b0["backupId"], b1["backupId"]}

    name = f"{vm.name}-rest"
    try:
        made = _restore(client, b0["backupId"], name=name, start=True)
        assert made["name"] == name and made["vmInstanceUuid"] != vm.uuid
        assert "running" in virsh("domstate", name)
        virsh("destroy", name)
        disks = domblklist(name, inactive=True)
        assert sorted(disks) == list(TARGETS)
        for target in TARGETS:
            assert Path(disks[target]).parent == Path(domblklist(vm.name)["vda"]).parent
            assert same(disks[target], frozen[0][target]), target
    finally:
        sh("virsh", "-c", "qemu:///system", "destroy", name, check=False)
        sh("virsh", "-c", "qemu:///system", "undefine", name, "--nvram", check=False)

    # A VM restored from b0 as thin overlays on the repository's files holds b0: the
    # prune is refused (it would write into those files, then remove them) until the
    # VM's disks are gone.
    thin = f"{vm.name}-thin"
    try:
        made = _restore(client, b0["backupId"], name=thin, keepChain=True)
        overlays = [d["installPath"] for d in made["disks"]]
        for path, d in zip(overlays, b0["disks"], strict=True):
            base = repo / vm.uuid / b0["backupId"] / f"{d['volumeUuid']}.qcow2"
            assert backing_chain(path)[1] == str(base)
        body = {"pruneBackups": {"vm": vm.name, "keep": 1}}
        refused = client.poll(client.call("PUT", f"{REPOS}/lab/actions", json=body))
        assert refused.status_code == 503, refused.text
        error = refused.json()["error"]
        assert error["code"] == "SYS.1006" and all(p in error["details"] for p in overlays)
        assert len(client.call("GET", f"{REPOS}/lab/backups").json()["backups"]) == 2
    finally:
        sh("virsh", "-c", "qemu:///system", "undefine", thin, check=False)
    for path in overlays:
        os.remove(path)
    pruned = _done(client, client.call("PUT", f"{REPOS}/lab/actions", json=body))
    assert pruned == {
        "vmInstanceUuid": vm.uuid,
        "pruned": [b0["backupId"]],
        "kept": [b1["backupId"]],
    }
    # The kept backup now stands alone and still reads exactly g1.
    (left,) = client.call("GET", f"{REPOS}/lab/backups").json()["backups"]
    assert left["backupId"] == b1["backupId"] and left["full"]
    for d, target in zip(left["disks"], TARGETS, strict=True):
        top = repo / vm.uuid / b1["backupId"] / f"{d['volumeUuid']}.qcow2"
        assert backing_chain(str(top)) == [str(top)]
        assert same(top, frozen[1][target])
    assert not (repo / vm.uuid / b0["backupId"]).exists()
    report = _done(client, client.call("PUT", f"{REPOS}/lab/actions", json={"verifyBackups": {}}))
    assert report["clean"] and report["checked"] == [b1["backupId"]]


def test_serve_killed_mid_export_leaves_no_half_backup_and_the_next_export_completes(
    labdir: Path,
) -> None:
    """kill -9 of `serve` while its export job copies (a 384 MiB disk, so the copy takes
    long enough to be caught in the act): the restarted server's recovery removes the
    partial, the old job's poll answers its failure (SYS.1001), nothing half is listed,
    and the same export then completes and reads exactly the group."""
    name = f"sg-lab-{uuid.uuid4().hex[:8]}"
    vm = create_lab_vm(lab_directory(name), name=name, start=False, disk_mib=512, data_disks=0)
    try:
        sh("qemu-io", "-f", "qcow2", "-c", "write -q -P 0x3c 0 384M", domblklist(name)["vda"])
        db = f"sqlite:///{labdir / 'kill.db'}"
        repo = vm.directory / "repo"
        _snapgroup(db, "account", "set-password", "admin", "--password-stdin", stdin=PASSWORD)
        views = json.loads(_snapgroup(db, "--json", "volumes", "--vm", name))
        root = next(v["volumeUuid"] for v in views["inventories"] if v["volumeType"] == "Root")
        caught = False
        with serving(db, repo) as (proc, client):
            body = {"params": {"rootVolumeUuid": root, "name": "big"}}
            group = _done(client, client.call("POST", "/volume-snapshots/group", json=body))
            group_uuid = group["inventory"]["uuid"]
            snapshot = group["inventory"]["volumeSnapshotRefs"][0]["volumeSnapshotInstallPath"]
            frozen = export(snapshot, vm.directory / "frozen.qcow2")
            body = {"params": {"groupUuid": group_uuid}}
            accepted = client.call("POST", f"{REPOS}/lab/backups", json=body)
            assert accepted.status_code == 202, accepted.text
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not caught:
                caught = any((repo / vm.uuid).glob(".partial-*/*.qcow2"))
                time.sleep(0.002)
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate()
        assert caught, "the export's partial never appeared"
        job_path = httpx.URL(accepted.json()["location"]).path  # the new server's port
        with serving(db, repo) as (_proc, client):
            # Started again: recovery ran before the first request.
            assert not list((repo / vm.uuid).glob(".partial-*"))
            polled = client.http.get(job_path, headers=client.auth)
            if polled.status_code == 503:  # killed before it published (the usual case)
                assert polled.json()["error"]["code"] == "SYS.1001"
                assert client.call("GET", f"{REPOS}/lab/backups").json()["backups"] == []
            else:  # it published between the partial's sighting and the kill
                assert polled.status_code == 200, polled.text
            backup = _done(client, client.call("POST", f"{REPOS}/lab/backups", json=body))
            disk = backup["backup"]["disks"][0]
            assert same(
                repo / vm.uuid / backup["backup"]["backupId"] / f"{disk['volumeUuid']}.qcow2",
                frozen,
            )
            report = _done(
                client, client.call("PUT", f"{REPOS}/lab/actions", json={"verifyBackups": {}})
            )
            assert report["clean"], report
    finally:
        vm.destroy()
