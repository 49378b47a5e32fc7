"""Files over REST on the fakes: a group's and a served backup's filesystems and
directories listed, a file streamed, a directory as tar, behind the session check;
bad requests answered at once."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapgroup.store.db import Database
from snapgroup.testing.fakes import lab_domain
from tests.rest.conftest import Api, Clock, build

REPOS = "/snapgroup/backup-repositories"


@pytest.fixture
def served(fast_dir: Path, tmp_path: Path) -> Iterator[Api]:
    db = Database(f"sqlite:///{fast_dir / 'store.db'}")
    (tmp_path / "main").mkdir()
    built = build(db, Clock(), backup_repositories={"main": str(tmp_path / "main")})
    (tmp_path / "vm").mkdir()
    paths = lab_domain(built.hv, directory=str(tmp_path / "vm"))
    built.images.write(paths[1], 0, "fs:ext4")
    built.images.write(paths[1], 1, "file:/etc/hosts=127.0.0.1 localhost\n")
    built.images.write(paths[1], 2, "file:/etc/app/conf=a=b\n")
    with built.client:
        built.session = built.login().json()["inventory"]["uuid"]
        yield built
    db.dispose()


def _export(api: Api, group: str) -> str:
    done = api.wait(
        api.call("POST", f"{REPOS}/main/backups", json={"params": {"groupUuid": group}})
    )
    assert done.status_code == 200, done.text
    backup: str = done.json()["backup"]["backupId"]
    return backup


def test_list_and_download_a_groups_and_a_backups_files(served: Api) -> None:
    group = served.create("g1")["uuid"]
    backup = _export(served, group)
    for base in (f"/snapgroup/groups/{group}/files", f"{REPOS}/main/backups/{backup}/files"):
        listed = served.call("GET", base)
        assert listed.status_code == 200, listed.text
        names = [f["name"] for f in listed.json()["filesystems"]]
        assert names == ["vda", "vdb", "vdc"]
        etc = served.call("GET", base, params={"disk": "vdb", "path": "/etc"}).json()
        assert etc["filesystem"] == "vdb" and etc["path"] == "/etc"
        assert [(e["name"], e["type"]) for e in etc["entries"]] == [
            ("app", "directory"),
            ("hosts", "file"),
        ]
        hosts = served.call("GET", base + "/content", params={"fs": "vdb", "path": "/etc/hosts"})
        assert hosts.status_code == 200
        assert hosts.content == b"127.0.0.1 localhost\n"
        assert hosts.headers["content-type"] == "application/octet-stream"
        assert hosts.headers["content-length"] == "20"
        assert 'filename="hosts"' in hosts.headers["content-disposition"]
        tree = served.call("GET", base + "/content", params={"fs": "vdb", "path": "/etc"})
        assert tree.headers["content-type"] == "application/x-tar"
        with tarfile.open(fileobj=io.BytesIO(tree.content)) as archive:
            members = {m.name: m for m in archive.getmembers()}
            assert archive.extractfile(members["./app/conf"]).read() == b"a=b\n"  # type: ignore[union-attr]
    assert served.engine.guest_files.launches == 8  # type: ignore[attr-defined]


def test_bad_file_requests_are_refused(served: Api) -> None:
    group = served.create("g1")["uuid"]
    base = f"/snapgroup/groups/{group}/files"
    cases = [
        (base, {"disk": "vdb", "path": "/missing"}, 404, "SYS.1003"),
        (base, {"disk": "vdb", "path": "relative"}, 400, "SYS.1007"),
        (base, {"fs": "vda", "path": "/"}, 422, "FILES.1000"),
        (base + "/content", {"fs": "vdb", "path": "/nope"}, 404, "SYS.1003"),
        (base + "/content", {}, 400, "SYS.1007"),
        (f"/snapgroup/groups/{'b' * 32}/files", {}, 404, "SYS.1003"),
        (f"{REPOS}/elsewhere/backups/{'c' * 32}/files", {}, 404, "SYS.1003"),
        (f"{REPOS}/main/backups/{'c' * 32}/files", {}, 404, "SYS.1003"),
    ]
    for path, params, status, code in cases:
        answer = served.call("GET", path, params=params)
        assert answer.status_code == status, (path, params, answer.text)
        assert answer.json()["error"]["code"] == code
    unauthenticated = served.client.get(f"/zstack/v1{base}")
    assert unauthenticated.status_code == 401
