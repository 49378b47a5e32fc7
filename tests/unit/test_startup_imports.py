"""What a command loads before and while it runs (issue 20): its own command's module and
what that runs, nothing else. Checked on sys.modules at the end of a real `snapgroup`
process (no daemon), never on a timing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from snapgroup.api import Engine
from snapgroup.cli.commands import COMMANDS
from snapgroup.cli.main import build_parser
from snapgroup.store.db import Database
from snapgroup.testing.fakes import FakeHypervisor, FakeImageTool, lab_domain

# The web stack: `serve` and `account` only.
REST = {"fastapi", "uvicorn", "starlette", "snapgroup.rest"}
# The engine's stack: no command line loads it before its command asks for the engine.
ENGINE = {"sqlalchemy", "sqlmodel", "pydantic", "libvirt", "snapgroup.api", "snapgroup.store"}
BACKUPS = {
    "snapgroup.adapters.backup_files",
    "snapgroup.adapters.backup_holds",
    "snapgroup.adapters.backup_repo",
    "snapgroup.ops.backing_up",
    "snapgroup.ops.export",
    "snapgroup.ops.exporting",
    "snapgroup.ops.prune_backups",
    "snapgroup.ops.restore",
}
POLICIES = {
    "snapgroup.ops.autosnap",
    "snapgroup.ops.autosnap_port",
    "snapgroup.ops.policies",
    "snapgroup.store.policy_repo",
}
FILES = {"snapgroup.adapters.guest_files", "snapgroup.ops.files", "snapgroup.ops.file_mounts"}
# A use case that registers a recovery: loaded by recover only when the journal holds
# an unfinished operation of its kind (ops/recovery.py HOMES).
RECOVERIES = {
    "snapgroup.ops.clone",
    "snapgroup.ops.creating",
    "snapgroup.ops.delete",
    "snapgroup.ops.delete_snapshot",
    "snapgroup.ops.revert",
    "snapgroup.ops.reverting",
}

DUMP = """
import atexit, json, sys
out, argv = sys.argv[1], sys.argv[2:]
def dump():
    with open(out, "w") as f:
        json.dump(sorted(sys.modules), f)
atexit.register(dump)
from snapgroup.cli.launch import main
sys.exit(main(argv))
"""


def loaded(tmp_path: Path, *argv: str) -> set[str]:
    """The modules a `snapgroup ARGV` process had loaded when it ended (it must succeed)."""
    out = tmp_path / "modules.json"
    env = {**os.environ, "SNAPGROUP_NO_DAEMON": "1"}
    done = subprocess.run(
        [sys.executable, "-c", DUMP, str(out), *argv],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(out.read_text()))


def under(modules: set[str], packages: set[str]) -> set[str]:
    """The modules that are one of `packages` or inside one."""
    return {m for m in modules if any(m == p or m.startswith(f"{p}.") for p in packages)}


@pytest.fixture
def store(tmp_path: Path) -> list[str]:
    """The global options of a command on an empty store of its own (libvirt's test
    driver: nothing below connects to it)."""
    return ["--connect", "test:///default", "--db", f"sqlite:///{tmp_path / 'store.db'}"]


def test_help_loads_no_command_module(tmp_path: Path) -> None:
    """`snapgroup --help` lists the commands from the catalog (COMMANDS) alone."""
    modules = loaded(tmp_path, "--help")
    assert under(modules, {"snapgroup"}) == {
        "snapgroup",
        "snapgroup.cli",
        "snapgroup.cli.launch",
        "snapgroup.cli.wire",
        "snapgroup.cli.main",
        "snapgroup.cli.commands",
    }


def test_help_lists_every_command_as_the_whole_parser_does() -> None:
    """The catalog's summaries are what each command's parser is made with."""
    whole, stubs = build_parser().format_help(), build_parser(stubs=True).format_help()
    assert whole == stubs
    text = " ".join(stubs.split())  # argparse wraps a long summary
    for name, entry in COMMANDS.items():
        if entry.summary is not None:
            assert f"{name} {' '.join(entry.summary.split())}" in text
        else:  # hidden: not listed (argparse printed help=SUPPRESS as "==SUPPRESS==")
            assert f"  {name}" not in stubs and "SUPPRESS" not in stubs


def test_a_commands_help_loads_only_that_command(tmp_path: Path) -> None:
    modules = loaded(tmp_path, "list", "--help")
    commands = {m for m in under(modules, {"snapgroup.cli"}) if m.count(".") == 2}
    assert commands - {"snapgroup.cli.launch", "snapgroup.cli.wire"} == {
        "snapgroup.cli.main",
        "snapgroup.cli.commands",
        "snapgroup.cli.context",
        "snapgroup.cli.output",
        "snapgroup.cli.listing",
        "snapgroup.cli.group_text",
        "snapgroup.cli.quick",  # asked first: it leaves --help to argparse
    }
    assert under(modules, REST | ENGINE) == set()


@pytest.mark.parametrize("argv", [["list"], ["--json", "list"], ["operations"]])
def test_a_read_loads_no_backups_policies_files_or_recoveries(
    tmp_path: Path, store: list[str], argv: list[str]
) -> None:
    modules = loaded(tmp_path, *store, *argv)
    assert "snapgroup.store.db" in modules  # it did read the store
    assert under(modules, REST | BACKUPS | POLICIES | FILES | RECOVERIES) == set()


def test_a_backup_listing_loads_no_policies_or_recoveries(tmp_path: Path, store: list[str]) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    modules = loaded(tmp_path, *store, "backups", "--at", str(repo))
    assert "snapgroup.cli.main" in modules  # a store not made yet: the engine's to make
    assert "snapgroup.adapters.backup_scan" in modules
    assert under(modules, REST | POLICIES | FILES | RECOVERIES) == set()


@pytest.mark.parametrize("argv", [["list"], ["--json", "list"], ["show"], ["--json", "show"]])
def test_a_read_of_a_current_store_loads_no_engine(tmp_path: Path, argv: list[str]) -> None:
    """On the embedded store, once made: sqlite3 alone (cli/quick.py), no SQLAlchemy."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    images = FakeImageTool()
    hv = FakeHypervisor(images)
    lab_domain(hv)
    group = Engine(hypervisor=hv, images=images, db=Database(url)).create(vm="vm1", name="g")
    modules = loaded(tmp_path, "--db", url, *argv, *([group.uuid] if "show" in argv else []))
    assert "snapgroup.store.quick_read" in modules
    assert "snapgroup.store.db" not in modules
    assert under(modules, (ENGINE - {"snapgroup.store"}) | REST) == set()


def test_a_backup_listing_on_a_clean_store_loads_no_engine(tmp_path: Path) -> None:
    """`backups` reads manifests: the engine only when the journal needs recovering."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    db = Database(url)
    with db.transaction():  # made, stamped, its journal empty
        pass
    db.dispose()
    repo = tmp_path / "repo"
    repo.mkdir()
    for argv in (["backups", "--at", str(repo)], ["--json", "backups", "--at", str(repo)]):
        modules = loaded(tmp_path, "--db", url, *argv)
        assert "snapgroup.adapters.backup_scan" in modules
        assert "snapgroup.store.db" not in modules  # the journal read by store/quick_read.py
        assert under(modules, (ENGINE - {"snapgroup.store"}) | REST | POLICIES | FILES) == set()
        assert under(modules, RECOVERIES) == set()
        # Nor argparse's command line, nor BackupRepo's files (cli/quick_backups.py):
        assert under(modules, QUICK_LISTING_SKIPS) == set()


# What `backups` on a clean store does without (issue 20: its start-up, ~20 ms of these
# in all, is measured against `virsh list`'s): argparse and the engine's command line
# (logging, the context's dataclasses), the checksums and writes of BackupRepo, and
# the dataclasses and typing modules the manifest's types no longer need.
QUICK_LISTING_SKIPS = {
    "argparse",
    "logging",
    "dataclasses",
    "inspect",
    "typing",
    "hashlib",
    "mmap",
    "shutil",
    "concurrent.futures",
    "snapgroup.cli.main",
    "snapgroup.cli.commands",
    "snapgroup.cli.context",
    "snapgroup.cli.output",
    "snapgroup.ops.notices",
    "snapgroup.adapters.backup_files",
    "snapgroup.adapters.backup_repo",
}
