"""`snapgroup backups` answered without argparse or the engine (cli/quick_backups.py,
issue 20): byte for byte what the argparse path (cli/backups.py) prints, with the same
exit status, on repositories of several VMs with full and incremental chains, damaged
and missing manifests, partials and prunes; every line it cannot read exactly is left
to argparse, with nothing written."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from snapgroup.cli import quick_backups
from snapgroup.cli.context import Context
from snapgroup.cli.main import main
from snapgroup.domain.backup_manifest import (
    FORMAT_VERSION,
    BackupManifest,
    DiskBackup,
    MemoryBackup,
)
from snapgroup.store.db import Database

WEB, DB, DUP1, DUP2 = "a" * 32, "d" * 32, "e" * 32, "f" * 32
VDA, VDB = "1" * 32, "2" * 32
SHA = "0" * 64


def bid(n: int) -> str:
    return f"{n:032x}"


def backup(vm: str, name: str, n: int, chain: tuple[int, ...] = (), **extra: Any) -> BackupManifest:
    ids = tuple(bid(i) for i in (*chain, n))
    disks = (
        DiskBackup(0, VDA, "vda", 1 << 30, ids[-2] if len(ids) > 1 else None, ids, SHA, 4096 * n),
        DiskBackup(1, VDB, "vdb", 1 << 20, None, ids[-1:], SHA, 512, compressed=n % 2 == 0),
    )
    return BackupManifest(
        backup_id=bid(n),
        created=f"2026-11-{n:02d}T03:00:00Z",
        vm_uuid=vm,
        vm_name=name,
        group_uuid=f"{n + 0x100:032x}",
        group_name=f"nightly {n}",
        group_create_date=f"2026-11-{n:02d}T02:59:00Z",
        inventory={"uuid": f"{n + 0x100:032x}", "volumeSnapshotRefs": []},
        domain_xml=f"<domain><name>{name}</name></domain>",
        disks=disks,
        **extra,
    )


def put(repo: Path, m: BackupManifest, text: str | None = None) -> Path:
    directory = repo / m.vm_uuid / m.backup_id
    directory.mkdir(parents=True)
    (directory / "manifest.json").write_text(m.to_json() if text is None else text)
    (directory / f"{VDA}.qcow2").write_bytes(b"QFI\xfb")
    return directory


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """VM "web 1": full 1 <- incr 2 <- incr 3, full 4 (memory, a reason), incr 9 on the
    damaged 8; VM "dbß ☃": full 5 <- incr 6 (written out of order); two VMs named "dup";
    damaged: 7 (not JSON), 8 (missing), 10 (names another backup), 11 (a newer format);
    not listed, not damaged: a partial, a prune's hidden backup, an emptied directory."""
    repo = tmp_path / "repo"
    memory = MemoryBackup(1 << 28, "3" * 64, "4" * 64, 1 << 20, "paused")
    for m in (
        backup(WEB, "web 1", 1),
        backup(WEB, "web 1", 2, (1,)),
        backup(WEB, "web 1", 3, (1, 2)),
        backup(WEB, "web 1", 4, full_reason="vdb was added", memory=memory),
        backup(DB, "dbß ☃", 6, (5,)),
        backup(DB, "dbß ☃", 5),
        backup(DUP1, "dup", 12),
        backup(DUP2, "dup", 13),
        backup(WEB, "web 1", 9, (8,)),
    ):
        put(repo, m)
    put(repo, backup(DB, "dbß ☃", 7), text='{"format": "snapgroup-backup", ')
    (repo / WEB / bid(8)).mkdir()
    (repo / WEB / bid(8) / f"{VDA}.qcow2").write_bytes(b"QFI\xfb")
    put(repo, backup(DB, "dbß ☃", 10), text=backup(DB, "dbß ☃", 11).to_json())
    newer = json.loads(backup(WEB, "web 1", 14).to_json())
    newer["formatVersion"] = FORMAT_VERSION + 1
    put(repo, backup(WEB, "web 1", 14), text=json.dumps(newer))
    (repo / WEB / f".partial-{bid(15)}").mkdir()
    (repo / WEB / f".partial-{bid(15)}" / f"{VDA}.qcow2").write_bytes(b"")
    hidden = put(repo, backup(WEB, "web 1", 16))
    (hidden / "manifest.json").rename(hidden / "manifest.pruning.json")
    (hidden / "prune.json").write_text("{}")
    (repo / DB / bid(17)).mkdir()  # a prune's last remains
    (repo / "not-a-vm").mkdir()
    (repo / WEB / "notes.txt").write_text("mine")
    return repo


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A store made, stamped, its journal empty: `backups` needs no recovery."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    db = Database(url)
    with db.transaction():
        pass
    db.dispose()
    monkeypatch.setenv("SNAPGROUP_DB", url)  # the argparse path reads os.environ
    return {"SNAPGROUP_DB": url}


def by_argparse(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()

    def context(args: Any) -> Context:
        def no_engine() -> Any:
            raise AssertionError("a clean journal: no engine")

        return Context(make_engine=no_engine, as_json=args.json)

    code = main(argv, out=out, err=err, context_factory=context)
    return code, out.getvalue(), err.getvalue()


def quickly(argv: list[str], env: dict[str, str]) -> tuple[int | None, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = quick_backups.answer(argv, out, err, env)
    return code, out.getvalue(), err.getvalue()


def lines(repo: Path) -> list[list[str]]:
    at = str(repo)
    dashed = f"{WEB[:8]}-{WEB[8:12]}-{WEB[12:16]}-{WEB[16:20]}-{WEB[20:]}".upper()
    return [
        ["backups", "--at", at],
        ["backups", f"--at={at}", "--tree"],
        ["backups", "--tree", "--at", at, "--vm", "web 1"],
        ["backups", "--at", at, "--vm", DB],
        ["backups", "--at", at, "--vm", dashed],
        ["backups", "--at", at, "--vm=dbß ☃", "--tree"],
        ["backups", "--at", at, "--vm", "dup"],  # two VMs: SYS.1007
        ["backups", "--at", at, "--vm", "nobody"],  # SYS.1003
        ["backups", "--at", at, "--vm", DUP2],
        ["backups", "--at", str(repo / "missing")],  # SYS.1003
        ["backups", "--at", str(repo / "not-a-vm" / ".." / WEB / "notes.txt")],  # not a dir
        ["backups", "--at", str(repo / "not-a-vm")],  # empty
        ["backups", "--at", "elsewhere", "--at", at],  # the last one given, as argparse
        ["--wait", "2", "backups", "--at", at, "--connect", "test:///default"],
        ["--db", "sqlite:///unused.db", "--connect=qemu:///system", "backups", "--at", at],
    ]


@pytest.mark.parametrize("index", range(15))
@pytest.mark.parametrize("as_json", ["", "--json first", "--json last"])
def test_lists_as_the_argparse_path_does(
    repo: Path, env: dict[str, str], index: int, as_json: str
) -> None:
    argv = lines(repo)[index]
    if argv[0] == "--db":  # its own store, clean too (--db is read before the environment)
        argv[1] = env["SNAPGROUP_DB"]
    if as_json == "--json first":
        argv = ["--json", *argv]
    elif as_json == "--json last":
        argv = [*argv, "--json"]
    fast = quickly(argv, env)
    assert fast[0] is not None, "answered"
    assert fast == by_argparse(argv)


def test_the_lines_cover_what_they_say(repo: Path, env: dict[str, str]) -> None:
    """The cases above hold what they are meant to: warnings for each damaged backup,
    a tree, each error's code (else a parity test could pass on empty answers)."""
    at = str(repo)
    code, out, err = quickly(["backups", "--at", at], env)
    assert code == 0 and out.count("\n") == 10  # the header and 9 backups
    assert [line.split()[2] for line in err.splitlines()] == [bid(8), bid(14), bid(7), bid(10)]
    assert "manifest.json is missing" in err and "newer than this snapgroup reads" in err
    code, out, _ = quickly(["backups", "--at", at, "--tree", "--vm", "web 1"], env)
    assert out.splitlines()[1:3] == [
        f"    {bid(2)}  2026-11-02T03:00:00Z  web 1  nightly 2  incr",
        f"        {bid(3)}  2026-11-03T03:00:00Z  web 1  nightly 3  incr",
    ]
    assert f"\n{bid(9)}  " in out  # its base damaged: a root
    for vm, status, error in (("dup", 1, "SYS.1007"), ("nobody", 1, "SYS.1003")):
        code, _, err = quickly(["backups", "--at", at, "--vm", vm], env)
        assert (code, err.split()[1]) == (status, f"{error}:")
    code, out, _ = quickly(["--json", "backups", "--at", str(repo / "missing")], env)
    assert (code, json.loads(out)["error"]["code"]) == (1, "SYS.1003")
    code, out, _ = quickly(["--json", "backups", "--at", f"{at}/{WEB}/notes.txt"], env)
    assert (code, json.loads(out)["error"]["code"]) == (1, "SYS.1006")


def test_prints_what_the_listing_printed_before(repo: Path, env: dict[str, str]) -> None:
    """The exact text (the printer moved to cli/backup_text.py: the same lines)."""
    code, out, err = quickly(["backups", "--at", str(repo), "--vm", DB], env)
    assert code == 0
    assert out == (
        "BACKUP                            CREATED               VM     GROUP"
        "      KIND         BYTES\n"
        f"{bid(5)}  2026-11-05T03:00:00Z  dbß ☃  nightly 5  full         20992\n"
        f"{bid(6)}  2026-11-06T03:00:00Z  dbß ☃  nightly 6  incremental  25088\n"
    )
    assert err == (
        f"warning: backup {bid(7)} of VM {DB} is not listed: {repo}/{DB}/{bid(7)}/manifest"
        ".json: not JSON: Expecting property name enclosed in double quotes: line 1 column"
        " 32 (char 31)\n"
        f"warning: backup {bid(10)} of VM {DB} is not listed: {repo}/{DB}/{bid(10)}/manifest"
        f".json: names backup {bid(11)} of VM {DB}\n"
    )
    code, out, err = quickly(["--json", "backups", "--at", str(repo), "--vm", "dup"], env)
    assert (code, err) == (1, "")
    assert json.loads(out) == {
        "error": {
            "code": "SYS.1007",
            "description": "invalid argument",
            "details": "VM name 'dup' names several VMs' backups: give the UUID",
            "elaboration": None,
            "opaque": None,
            "cause": None,
        }
    }


@pytest.mark.parametrize(
    "argv",
    [
        ["backups"],  # --at is required: argparse's usage error
        ["backups", "--at"],
        ["backups", "--at="],
        ["backups", "--at", "-x"],
        ["backups", "--a", "R"],  # argparse's abbreviation
        ["backups", "--at", "R", "--tr"],
        ["backups", "--at", "R", "--tree=yes"],
        ["backups", "-h"],
        ["backups", "--at", "R", "--help"],
        ["-v", "backups", "--at", "R"],
        ["backups", "--at", "R", "--verbose"],
        ["backups", "--at", "R", "extra"],
        ["backups", "backups", "--at", "R"],
        ["--at", "R", "backups"],
        ["--tree", "backups", "--at", "R"],
        ["--json=1", "backups", "--at", "R"],
        ["--", "backups", "--at", "R"],
        ["backups", "--at", "R", "--wait", "soon"],
        ["backups", "--at", "R", "--db"],
        ["list"],
        ["export", "x", "--to", "R"],
        [],
    ],
    ids=" ".join,
)
def test_leaves_to_argparse_what_it_cannot_read_exactly(
    repo: Path, env: dict[str, str], argv: list[str]
) -> None:
    argv = [str(repo) if a == "R" else a for a in argv]
    assert quickly(argv, env) == (None, "", "")


def test_an_unfinished_operation_is_the_engines_to_recover_first(
    repo: Path, env: dict[str, str], tmp_path: Path
) -> None:
    """backups.py recovers when the journal is not clean: so the quick path answers
    nothing then, nor on a store it cannot read alone (not made yet, PostgreSQL)."""
    argv = ["backups", "--at", str(repo)]
    assert quickly(argv, env)[0] == 0
    with sqlite3.connect(env["SNAPGROUP_DB"].removeprefix("sqlite:///")) as conn:
        conn.execute(
            "INSERT INTO operation (uuid, kind, vm_uuid, state, step, plan, host, pid,"
            " started, updated) VALUES ('x', 'delete', 'v', 'running', 'begin', '{}', 'h',"
            " 1, '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
        )
    assert quickly(argv, env) == (None, "", "")
    for url in (f"sqlite:///{tmp_path}/none.db", "postgresql://u:p@127.0.0.1/x"):
        assert quickly(argv, {"SNAPGROUP_DB": url}) == (None, "", "")
        assert quickly(["--db", url, *argv], env) == (None, "", "")
    assert not (tmp_path / "none.db").exists()


LAUNCH = "import sys; from snapgroup.cli.launch import main; sys.exit(main(sys.argv[1:]))"
ARGPARSE = "import sys; from snapgroup.cli.main import main; sys.exit(main(sys.argv[1:]))"


@pytest.mark.parametrize(
    "argv",
    [
        ["backups", "--at", "R"],
        ["backups", "--at", "R", "--tree", "--json"],
        ["backups", "--at", "R/missing"],
        ["--json", "backups", "--at", "R", "--vm", "nobody"],
    ],
    ids=" ".join,
)
def test_a_whole_process_prints_as_the_argparse_path_does(
    repo: Path, env: dict[str, str], argv: list[str]
) -> None:
    """The launcher's own process (no daemon): its streams, in order, and its status."""
    argv = [a.replace("R", str(repo), 1) if a.startswith("R") else a for a in argv]
    proc_env = {**os.environ, **env, "SNAPGROUP_NO_DAEMON": "1", "PYTHONUNBUFFERED": "1"}

    def run(code: str) -> tuple[int, str]:
        done = subprocess.run(
            [sys.executable, "-c", code, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # one stream: the order of warnings and table too
            text=True,
            env=proc_env,
            check=False,
        )
        return done.returncode, done.stdout

    fast = run(LAUNCH)
    assert fast == run(ARGPARSE)
    assert fast[1]  # something was said


def test_an_interrupt_is_said_as_the_argparse_path_says_it_and_a_surprise_is_its_own(
    repo: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """^C while reading: status 130 and "interrupted", on either path. Anything else
    unexpected is the argparse path's to explain (SYS.1001): nothing written here."""
    from snapgroup.adapters.backup_scan import RepositoryReader

    argv = ["backups", "--at", str(repo)]

    def interrupted(self: RepositoryReader, vm_uuid: str | None = None) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(RepositoryReader, "scan", interrupted)
    assert quickly(argv, env) == by_argparse(argv) == (130, "", "interrupted\n")

    def broken(self: RepositoryReader, vm_uuid: str | None = None) -> Any:
        raise RuntimeError("surprise")

    monkeypatch.setattr(RepositoryReader, "scan", broken)
    assert quickly(argv, env) == (None, "", "")
    assert by_argparse(argv) == (1, "", "error SYS.1001: RuntimeError: surprise\n")


@pytest.mark.parametrize("vm", [None, "web 1", DB])
def test_lists_what_the_engines_scan_backups_finds(
    repo: Path, env: dict[str, str], vm: str | None
) -> None:
    """The listing is the engine's (Engine.scan_backups, its default repositories), as
    the REST API serves it too."""
    from snapgroup.api import Engine
    from snapgroup.testing.fakes import FakeHypervisor, FakeImageTool

    images, db = FakeImageTool(), Database("sqlite://")
    engine = Engine(hypervisor=FakeHypervisor(images), images=images, db=db)
    found, damaged = engine.scan_backups(at=str(repo), vm=vm)
    db.dispose()
    argv = ["--json", "backups", "--at", str(repo), *(["--vm", vm] if vm else [])]
    code, out, err = quickly(argv, env)
    assert (code, err) == (0, "")
    assert json.loads(out) == {
        "backups": [m.summary() for m in found],
        "damaged": [d.to_dict() for d in damaged],
    }
