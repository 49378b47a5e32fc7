"""Backups over REST on the fakes (the real BackupRepo in tmp_path, the fake image tool
writing its copies there): a client names a repository the server serves, never a
directory; export, list, show, verify, restore and prune answer as the CLI's --json;
bad requests answer 400/404 at once and start nothing. The real stack's journey is
tests/lab/test_rest_e2e.py's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from snapgroup.cli.serve import parse_repositories
from snapgroup.domain.errors import InvalidArgument
from snapgroup.store.db import Database
from snapgroup.testing.fakes import lab_domain
from tests.rest.conftest import VM, Api, Clock, build

REPOS = "/snapgroup/backup-repositories"


@pytest.fixture
def served(fast_dir: Path, tmp_path: Path) -> Iterator[Api]:
    db = Database(f"sqlite:///{fast_dir / 'store.db'}")
    (tmp_path / "main").mkdir()
    repositories = {"main": str(tmp_path / "main"), "offsite": str(tmp_path / "offsite")}
    built = build(db, Clock(), backup_repositories=repositories)
    (tmp_path / "vm").mkdir()  # vm1's disks in a real directory: restore writes beside them
    lab_domain(built.hv, directory=str(tmp_path / "vm"))
    with built.client:
        built.session = built.login().json()["inventory"]["uuid"]
        yield built
    db.dispose()


def _export(api: Api, group: str, repo: str = "main", **params: Any) -> dict[str, Any]:
    done = api.wait(
        api.call("POST", f"{REPOS}/{repo}/backups", json={"params": {"groupUuid": group, **params}})
    )
    assert done.status_code == 200, done.text
    backup: dict[str, Any] = done.json()["backup"]
    api.clock.advance(60)  # backups are listed in the order of their times
    return backup


def test_export_list_show_verify_a_served_repository(served: Api, tmp_path: Path) -> None:
    repos = served.call("GET", REPOS).json()["inventories"]
    assert repos == [
        {"name": "main", "path": str(tmp_path / "main")},
        {"name": "offsite", "path": str(tmp_path / "offsite")},
    ]
    g1, g2 = served.create("g1")["uuid"], served.create("g2")["uuid"]
    first = _export(served, g1)
    assert first["full"] and first["groupUuid"] == g1 and first["vmInstanceUuid"] == VM
    second = _export(served, g2)
    assert not second["full"]  # g1's export is its base
    assert {d["baseBackupId"] for d in second["disks"]} == {first["backupId"]}
    # The files are in the served directory, under the VM's UUID.
    assert (tmp_path / "main" / VM / second["backupId"] / "manifest.json").is_file()
    listed = served.call("GET", f"{REPOS}/main/backups").json()["backups"]
    assert [b["backupId"] for b in listed] == [first["backupId"], second["backupId"]]
    assert listed[1] == second
    assert served.call("GET", f"{REPOS}/main/backups").json()["damaged"] == []
    by_vm = served.call("GET", f"{REPOS}/main/backups", params={"vm": "vm1"}).json()["backups"]
    assert by_vm == listed
    shown = served.call("GET", f"{REPOS}/main/backups/{second['backupId']}")
    assert shown.status_code == 200 and shown.json() == {"backup": second}
    # A repository made by the first export: the other one is not there yet.
    missing = served.call("GET", f"{REPOS}/offsite/backups")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "SYS.1003"

    verified = served.wait(
        served.call("PUT", f"{REPOS}/main/actions", json={"verifyBackups": {}})
    ).json()
    assert verified["clean"] and set(verified["checked"]) == {b["backupId"] for b in listed}
    # A flipped byte in the full backup's file is found, with both backups it breaks.
    disk = first["disks"][0]["volumeUuid"]
    damaged = tmp_path / "main" / VM / first["backupId"] / f"{disk}.qcow2"
    data = bytearray(damaged.read_bytes())
    data[0] ^= 0xFF
    damaged.write_bytes(bytes(data))
    found = served.wait(
        served.call(
            "PUT",
            f"{REPOS}/main/actions",
            json={"verifyBackups": {"backupId": second["backupId"]}},
        )
    )
    assert found.status_code == 200  # a finding is the verification's result
    report = found.json()
    assert not report["clean"]
    assert [(f["backupId"], f["volumeUuid"]) for f in report["findings"]] == [
        (first["backupId"], disk)
    ]
    assert set(report["broken"]) == {first["backupId"], second["backupId"]}
    # A manifest made unreadable: not listed, and said so beside the listing.
    (tmp_path / "main" / VM / second["backupId"] / "manifest.json").write_text("{")
    doc = served.call("GET", f"{REPOS}/main/backups").json()
    assert [b["backupId"] for b in doc["backups"]] == [first["backupId"]]
    assert [(d["backupId"], d["vmInstanceUuid"]) for d in doc["damaged"]] == [
        (second["backupId"], VM)
    ]
    assert "not JSON" in doc["damaged"][0]["problem"]
    body = {"verifyBackups": {"backupId": second["backupId"]}}
    named = served.wait(served.call("PUT", f"{REPOS}/main/actions", json=body)).json()
    assert [f["file"] for f in named["findings"]] == [f"{second['backupId']}/manifest.json"]


def test_restore_as_a_new_vm_and_prune(served: Api, tmp_path: Path) -> None:
    g1 = served.create("g1")
    top = served.hv.disk_path(VM, "vda")
    assert top is not None
    served.images.write(top, 7, "after g1")  # g2 differs: the restore must be g1's
    g2 = served.create("g2")["uuid"]
    b1, b2 = _export(served, g1["uuid"])["backupId"], _export(served, g2)["backupId"]
    restored = served.wait(
        served.call(
            "PUT",
            f"{REPOS}/main/backups/{b1}/actions",
            json={"restoreBackup": {"name": "vm1-restored"}},
        )
    )
    assert restored.status_code == 200, restored.text
    doc = restored.json()["restored"]
    assert doc["backupId"] == b1 and doc["name"] == "vm1-restored"
    assert doc["vmInstanceUuid"] not in (None, VM)
    assert served.hv.lookup("vm1-restored").uuid == doc["vmInstanceUuid"]
    # Its disks are the fakes' copies of the backup's view, UUID-named.
    assert {d["target"] for d in doc["disks"]} == {"vda", "vdb", "vdc"}
    snapshots = {r["deviceId"]: r["volumeSnapshotInstallPath"] for r in g1["volumeSnapshotRefs"]}
    for d in doc["disks"]:  # new UUID-named files beside vm1's, each g1's view of its disk
        path = Path(d["installPath"])
        assert path.parent == tmp_path / "vm" and len(path.stem) == 32
        device = "abc".index(d["target"][-1])
        assert served.images.read(str(path)) == served.images.read(snapshots[device])

    kept = served.wait(  # 2.0 is the integer 2 in JSON
        served.call("PUT", f"{REPOS}/main/actions", json={"pruneBackups": {"vm": VM, "keep": 2.0}})
    )
    assert kept.status_code == 200 and kept.json() == {
        "vmInstanceUuid": VM,
        "pruned": [],
        "kept": [b1, b2],
    }


def test_bad_backup_requests_are_refused_at_once(served: Api, tmp_path: Path) -> None:
    group = served.create("g1")["uuid"]
    before = sorted(p.name for p in (tmp_path / "main").iterdir())

    def refused(method: str, path: str, status: int, code: str, **kwargs: Any) -> str:
        response = served.call(method, path, **kwargs)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["code"] == code, error
        return str(error["details"])

    # A repository the server does not serve, or a path where a name belongs.
    details = refused(
        "POST", f"{REPOS}/elsewhere/backups", 404, "SYS.1003", json={"params": {"groupUuid": group}}
    )
    assert "elsewhere" in details and "main" in details
    refused("GET", f"{REPOS}/..%2Fetc/backups", 404, "SYS.1003")
    refused("GET", f"{REPOS}/main/backups/{'0' * 32}", 404, "SYS.1003")
    refused("GET", f"{REPOS}/main/backups/not-a-uuid", 400, "SYS.1007")
    # Unknown group, malformed body, two actions at once, keep below 1.
    refused(
        "POST", f"{REPOS}/main/backups", 404, "SYS.1003", json={"params": {"groupUuid": "f" * 32}}
    )
    refused("POST", f"{REPOS}/main/backups", 400, "SYS.1007", json={"params": {"full": True}})
    both = {"verifyBackups": {}, "pruneBackups": {"vm": VM, "keep": 1}}
    refused("PUT", f"{REPOS}/main/actions", 400, "SYS.1007", json=both)
    for keep in (0, 1.5, "2", True):
        prune = {"pruneBackups": {"vm": VM, "keep": keep}}
        refused("PUT", f"{REPOS}/main/actions", 400, "SYS.1007", json=prune)
    # A VM with no backup there, a backup that is not there: 404 before any job.
    prune = {"pruneBackups": {"vm": "nobody", "keep": 1}}
    refused("PUT", f"{REPOS}/main/actions", 404, "SYS.1003", json=prune)
    verify = {"verifyBackups": {"backupId": "e" * 32}}
    refused("PUT", f"{REPOS}/main/actions", 404, "SYS.1003", json=verify)
    restore = {"restoreBackup": {"name": "new"}}
    refused("PUT", f"{REPOS}/main/backups/{'e' * 32}/actions", 404, "SYS.1003", json=restore)
    nameless = {"restoreBackup": {"name": ""}}
    refused("PUT", f"{REPOS}/main/backups/{'e' * 32}/actions", 400, "SYS.1007", json=nameless)
    # Nothing was written, no VM defined.
    assert sorted(p.name for p in (tmp_path / "main").iterdir()) == before
    assert [d.name for d in served.hv.domains.values()] == ["vm1"]


def test_a_policy_exports_only_to_a_served_repository(served: Api, tmp_path: Path) -> None:
    body = {"params": {"name": "p", "vms": ["vm1"], "hourly": 2, "exportTo": "main"}}
    made = served.call("POST", "/snapgroup/policies", json=body)
    assert made.status_code == 200, made.text
    assert made.json()["inventory"]["exportTo"] == str(tmp_path / "main")
    by_path = {**body["params"], "exportTo": str(tmp_path / "main")}
    assert served.call("PUT", "/snapgroup/policies/p", json={"params": by_path}).status_code == 200
    for elsewhere in ("nowhere", "/etc", str(tmp_path)):
        bad = {**body["params"], "exportTo": elsewhere}
        response = served.call("PUT", "/snapgroup/policies/p", json={"params": bad})
        assert response.status_code == 404 and response.json()["error"]["code"] == "SYS.1003"
    # The policy kept its served repository.
    shown = served.call("GET", "/snapgroup/policies/p").json()["inventory"]
    assert shown["exportTo"] == str(tmp_path / "main")


def test_serve_parses_its_repositories() -> None:
    assert parse_repositories(["a=/srv/b/", "c.d=/mnt/x"]) == {"a": "/srv/b", "c.d": "/mnt/x"}
    for bad in (["a"], ["=/x"], ["a=rel/dir"], ["a/b=/x"], ["a=/x", "a=/y"], [".a=/x"]):
        with pytest.raises(InvalidArgument):
            parse_repositories(bad)


def test_the_manifest_on_disk_is_what_the_listing_summarises(served: Api, tmp_path: Path) -> None:
    group = served.create("g1")["uuid"]
    backup = _export(served, group)
    manifest = json.loads(
        (tmp_path / "main" / VM / backup["backupId"] / "manifest.json").read_text()
    )
    assert manifest["backupId"] == backup["backupId"]
    assert [d["volumeUuid"] for d in manifest["disks"]] == [
        d["volumeUuid"] for d in backup["disks"]
    ]
    assert "domainXml" not in backup and manifest["domainXml"].startswith("<domain")
