"""`snapgroup list` and `show` answered without the engine (cli/quick.py over
store/quick_read.py, issue 20): byte for byte what the engine prints, on the same store;
and every line it cannot answer exactly is left to the engine, with nothing written."""

from __future__ import annotations

import io
import itertools
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from snapgroup.api import Engine
from snapgroup.cli import quick
from snapgroup.cli.context import Context
from snapgroup.cli.main import main
from snapgroup.domain.inventory import Group
from snapgroup.store import quick_read
from snapgroup.store.db import DEFAULT_DB_URL, Database, schema_fingerprint
from snapgroup.testing.fakes import FakeHypervisor, FakeImageTool, lab_domain


class Store:
    def __init__(self, path: Path, engine: Engine, groups: list[Group]) -> None:
        self.path, self.engine, self.groups = path, engine, groups
        self.url = f"sqlite:///{path}"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A store file with groups of every kind the inventory shows: described, unicode,
    protected, a ref's snapshot deleted (merged away), two VMs."""
    path = tmp_path / "store.db"
    db = Database(f"sqlite:///{path}")
    images = FakeImageTool()
    hv = FakeHypervisor(images)
    counter = itertools.count(1)
    start = datetime(2026, 11, 26, 22, 0, 0, 250_000, tzinfo=UTC)
    engine = Engine(
        hypervisor=hv,
        images=images,
        db=db,
        clock=lambda: start + timedelta(seconds=13_000 * next(counter)),  # days, AM, PM
        new_uuid=lambda: f"{next(counter):032x}",
    )
    lab_domain(hv)
    lab_domain(hv, uuid="b" * 32, name="vm2", data_disks=0, directory="/lab2")
    groups = [
        engine.create(vm="vm1", name="first", description="before the upgrade"),
        engine.create(vm="vm2", name="ünïcode ☃"),
        engine.create(vm="vm1", name="third"),
        engine.create(vm="vm1", name="fourth"),
    ]
    engine.protect(groups[2].uuid)
    engine.delete_snapshot(groups[0].refs[1].volume_snapshot_uuid)
    yield Store(path, engine, [engine.get(g.uuid) for g in groups])
    db.dispose()


def by_engine(store: Store, argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()

    def context(args: Any) -> Context:
        return Context(make_engine=lambda: store.engine, as_json=args.json)

    code = main(argv, out=out, err=err, context_factory=context)
    return code, out.getvalue(), err.getvalue()


def quickly(store: Store, argv: list[str]) -> tuple[int | None, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = quick.answer(argv, out, err, {"SNAPGROUP_DB": store.url})
    return code, out.getvalue(), err.getvalue()


def test_the_stamp_and_default_are_the_stores() -> None:
    assert schema_fingerprint() == quick_read.SCHEMA_FINGERPRINT
    assert quick_read.DEFAULT_URL == DEFAULT_DB_URL


LINES = [
    ["list"],
    ["--json", "list"],
    ["list", "--json"],
    ["list", "--limit", "2"],
    ["list", "--limit=2", "--start", "1"],
    ["list", "--start", "3"],
    ["list", "--start", "9"],
    ["list", "--limit", "0"],
    ["list", "--limit", "1", "--limit", "3"],  # the last one given, as argparse
    ["--wait", "2", "list", "--connect", "test:///default"],
]


@pytest.mark.parametrize("argv", LINES, ids=" ".join)
@pytest.mark.parametrize("zone", ["UTC", "America/New_York"])
def test_lists_as_the_engine_does(
    store: Store, argv: list[str], zone: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", zone)
    import time

    time.tzset()
    try:
        fast = quickly(store, argv)
        assert fast[0] == 0
        assert fast == by_engine(store, argv)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


@pytest.mark.parametrize("form", ["plain", "dashed", "upper"])
@pytest.mark.parametrize("as_json", [False, True])
def test_shows_as_the_engine_does(store: Store, form: str, as_json: bool) -> None:
    for group in store.groups:
        uuid = group.uuid
        given = {
            "plain": uuid,
            "dashed": f"{uuid[:8]}-{uuid[8:12]}-{uuid[12:16]}-{uuid[16:20]}-{uuid[20:]}",
            "upper": uuid.upper(),
        }[form]
        argv = ["--json", "show", given] if as_json else ["show", given]
        fast = quickly(store, argv)
        assert fast[0] == 0
        assert fast == by_engine(store, argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["list", "--vm", "vm1"],  # a libvirt lookup: the engine's
        ["-v", "list"],
        ["--verbose", "list"],
        ["list", "--lim", "2"],  # argparse's abbreviation
        ["list", "--limit", "-1"],
        ["list", "--limit", "two"],
        ["list", "--limit"],
        ["list", "extra"],
        ["list", "--help"],
        ["--wait", "soon", "list"],
        ["show"],
        ["show", "not-a-uuid"],
        ["show", "ab" * 16],  # not found: the engine's error
        ["show", "a-" * 16],  # dashes where parse_uuid takes none
        ["show", "1" * 32, "2" * 32],
        ["create", "--vm", "vm1", "--name", "x"],
        ["--help"],
        [],
        ["--", "list"],
    ],
    ids=" ".join,
)
def test_leaves_to_the_engine_what_it_cannot_answer_exactly(store: Store, argv: list[str]) -> None:
    assert quickly(store, argv) == (None, "", "")


def test_leaves_other_stores_to_the_engine(store: Store, tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    for url in [
        "postgresql://u:p@127.0.0.1/x",
        "sqlite://",
        "sqlite:///:memory:",
        f"sqlite:///{tmp_path}/missing.db",
        f"sqlite:///{store.path}?mode=ro",
        "sqlite+pysqlite:///" + str(store.path),
    ]:
        assert quick.answer(["list"], out, err, {"SNAPGROUP_DB": url}) is None
    assert not (tmp_path / "missing.db").exists()  # not made: the engine makes a store
    assert quick.answer(["--db", store.url, "list"], out, err, {}) == 0  # --db first
    with sqlite3.connect(store.path) as conn:  # a store of another schema (older code)
        conn.execute("UPDATE schema_stamp SET fingerprint = 'older'")
    assert quick.answer(["list"], out, err, {"SNAPGROUP_DB": store.url}) is None
    with sqlite3.connect(store.path) as conn:  # made before stamps
        conn.execute("DROP TABLE schema_stamp")
    assert quick.answer(["list"], out, err, {"SNAPGROUP_DB": store.url}) is None


def test_a_store_sqlite_cannot_open_is_the_engines_to_explain(tmp_path: Path) -> None:
    """Not a database, or not a file: nothing answered, nothing written or changed."""
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not SQLite" * 100)
    folder = tmp_path / "folder.db"
    folder.mkdir()
    out, err = io.StringIO(), io.StringIO()
    for path in (garbage, folder):
        assert quick.answer(["list"], out, err, {"SNAPGROUP_DB": f"sqlite:///{path}"}) is None
    assert garbage.read_bytes() == b"not SQLite" * 100 and list(folder.iterdir()) == []
    assert (out.getvalue(), err.getvalue()) == ("", "")


def test_a_damaged_store_is_the_engines_to_explain(store: Store) -> None:
    with sqlite3.connect(store.path) as conn:
        conn.execute("ALTER TABLE volume_snapshot_group RENAME COLUMN memory_mode TO other")
    assert quickly(store, ["list"]) == (None, "", "")
    assert quickly(store, ["show", store.groups[0].uuid]) == (None, "", "")


def test_an_unfinished_operation_is_the_engines_to_recover_first(store: Store) -> None:
    """Every command starts from a consistent state (the engine recovers first): with an
    operation unfinished in the journal, nothing is read without it."""
    env = {"SNAPGROUP_DB": store.url}
    assert quick.journal_clean(None, env)
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE operation SET state = 'running' WHERE rowid = 1")
    assert quickly(store, ["list"]) == (None, "", "")
    assert quickly(store, ["show", store.groups[0].uuid]) == (None, "", "")
    assert not quick.journal_clean(None, env)
    assert not quick.journal_clean("postgresql://u:p@127.0.0.1/x", env)


def test_show_with_lists_options_is_argparses_usage_error(store: Store) -> None:
    for extra in (["--limit", "2"], ["--start=1"]):
        argv = ["--json", "show", store.groups[0].uuid, *extra]
        assert quickly(store, argv) == (None, "", "")
        assert by_engine(store, argv)[0] == 2
