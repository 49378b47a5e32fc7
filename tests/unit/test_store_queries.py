"""The store's batched queries answer exactly what their one-at-a-time forms do, and an
SQLite store is in WAL mode with every index the schema names (issue 6's fixes)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from sqlmodel import select

from snapgroup.clone import clone
from snapgroup.lineage import pinned_snapshots
from snapgroup.models import VmState
from snapgroup.store.db import Database
from snapgroup.store.repo import Repo
from snapgroup.store.tables import VolumeRow
from tests.unit.conftest import Lab
from tests.unit.test_lifecycle import history


def _clones(lab: Lab) -> None:
    """Groups on a VM, a clone of one of them, and a clone of a group of that clone."""
    groups = history(lab, VmState.RUNNING)
    clone(lab.engine, groups[1].uuid, name="copy")
    own = lab.engine.create(vm="copy", name="c0")
    clone(lab.engine, own.uuid, name="copy2")


def test_lineages_are_lineage_of_each_volume(lab: Lab) -> None:
    _clones(lab)
    with lab.engine.db.transaction() as session:
        repo = Repo(session)
        volumes = list(session.exec(select(VolumeRow)))
        assert len(volumes) == 9
        batched = repo.lineages(volumes)
        for v in volumes:
            assert sorted(s.uuid for s in batched[v.uuid]) == sorted(
                s.uuid for s in repo.lineage(v)
            )
        assert repo.lineages([]) == {}


def test_pinned_for_some_lineages_agrees_with_the_whole_store(lab: Lab) -> None:
    _clones(lab)
    with lab.engine.db.transaction() as session:
        repo = Repo(session)
        everything = pinned_snapshots(repo)
        assert everything  # the clones pin snapshots of the VM and of the first clone
        volumes = list(session.exec(select(VolumeRow)))
        for volume in volumes:
            lineage = repo.lineage(volume)
            some = pinned_snapshots(repo, [lineage])
            mine = {s.uuid for s in lineage}
            assert {u for u in some if u in mine} == {u for u in everything if u in mine}


def test_sqlite_store_is_wal_and_gets_missing_indexes(tmp_path: Path) -> None:
    path = tmp_path / "store" / "snapgroup.db"
    Database(f"sqlite:///{path}").dispose()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.execute("DROP INDEX ix_volume_parent_snapshot_uuid")  # a store made before it
        conn.commit()
        db = Database(f"sqlite:///{path}")
        with db.transaction() as session:
            Repo(session).volumes_of_vm("a" * 32)
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(volume)")}
        assert "ix_volume_parent_snapshot_uuid" in indexes
        for suffix in ("-wal", "-shm"):
            extra = path.with_name(path.name + suffix)
            if extra.exists():
                assert os.stat(extra).st_mode & 0o777 == 0o600
        db.dispose()
    finally:
        conn.close()
