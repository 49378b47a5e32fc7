"""The store's batched queries answer exactly what their one-at-a-time forms do, and an
SQLite store is in WAL mode with every index the schema names (issue 6's fixes)."""

from __future__ import annotations

import gc
import os
import sqlite3
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

from sqlalchemy import event
from sqlmodel import select

from snapgroup.domain.errors import OperationError
from snapgroup.domain.models import ChainSnapshot, VmState
from snapgroup.domain.planner import MergePlan, expected_chain, plan_merge
from snapgroup.ops.group_views import load_groups
from snapgroup.ops.lineage import pinned_snapshots
from snapgroup.store.db import Database
from snapgroup.store.repo import Repo
from snapgroup.store.tables import VolumeRow
from tests.unit.conftest import Lab
from tests.unit.test_lifecycle import VM, history


def _clones(lab: Lab) -> None:
    """Groups on a VM, a clone of one of them, and a clone of a group of that clone."""
    groups = history(lab, VmState.RUNNING)
    lab.engine.clone(groups[1].uuid, name="copy")
    own = lab.engine.create(vm="copy", name="c0")
    lab.engine.clone(own.uuid, name="copy2")


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


def _branched(lab: Lab) -> None:
    """_clones, then a revert of the VM (an old branch beside its current chain) and
    one more group on the new branch."""
    _clones(lab)
    first = lab.engine.list_groups(vm="vm1")[0]
    assert lab.engine.revert(first.uuid, safety_group=False, stop=True).error is None
    lab.engine.create(vm="vm1", name="after-revert")


def _chain_or_error(volume: VolumeRow, snapshots: Iterable[ChainSnapshot]) -> object:
    try:
        return expected_chain(volume, snapshots)
    except OperationError as exc:
        return exc.details


def test_chains_give_the_chain_lineage_gives(lab: Lab) -> None:
    _branched(lab)
    with lab.engine.db.transaction() as session:
        repo = Repo(session)
        volumes = list(session.exec(select(VolumeRow)))
        chains = repo.chains(volumes)
        assert set(chains) == {v.uuid for v in volumes}
        clone_disks = 0
        for v in volumes:
            lineage = repo.lineage(v)
            assert {link.uuid for link in chains[v.uuid]} <= {s.uuid for s in lineage}
            assert expected_chain(v, chains[v.uuid]) == expected_chain(v, lineage)
            clone_disks += any(s.volume_uuid != v.uuid for s in lineage)
        assert clone_disks  # the recursive part was taken
        assert repo.chains([]) == {}


def test_chains_stop_at_a_deleted_snapshot_as_lineage_does(lab: Lab) -> None:
    _branched(lab)
    with lab.engine.db.transaction() as session:
        repo = Repo(session)
        volumes = list(session.exec(select(VolumeRow)))
        for v in volumes:  # one snapshot in the middle of every chain: own and foreign
            chain = [s for s in repo.lineage(v) if s.uuid == v.parent_snapshot_uuid]
            below = chain and repo.snapshot(chain[0].parent_uuid or "")
            if below:
                below.deleted = True
        session.flush()
        chains = repo.chains(volumes)
        broken = 0
        for v in volumes:
            found = _chain_or_error(v, chains[v.uuid])
            assert found == _chain_or_error(v, repo.lineage(v))
            broken += isinstance(found, str)
        assert broken >= 3  # the VM's disks, and the clones' through them
        session.rollback()


def test_group_views_read_what_the_rows_hold(lab: Lab) -> None:
    """The column-only listing (raw dates converted once each) against the ORM rows."""
    _branched(lab)
    with lab.engine.db.transaction() as session:
        repo = Repo(session)
        rows = repo.groups(vm_uuid=VM)
        listed = lab.engine.list_groups(vm="vm1")
        assert [g.uuid for g in listed] == [r.uuid for r in rows]
        for group, row in zip(listed, rows, strict=True):
            assert (group.name, group.vm_uuid, group.create_date, group.last_op_date) == (
                row.name,
                row.vm_uuid,
                row.create_date,
                row.last_op_date,
            )
            assert group.create_date.tzinfo is not None
            pairs = repo.refs_with_snapshots([row.uuid])
            assert [r.volume_snapshot_uuid for r in group.refs] == [
                ref.volume_snapshot_uuid for ref, _ in pairs
            ]
            for ref, (want, snap) in zip(group.refs, pairs, strict=True):
                assert (ref.device_id, ref.install_path, ref.snapshot_name) == (
                    want.device_id,
                    snap.install_path,
                    snap.name,
                )
                assert (ref.create_date, ref.volume_last_attach_date) == (
                    want.create_date,
                    want.volume_last_attach_date,
                )
                assert ref.last_op_date == max(want.last_op_date, snap.last_op_date)
        everyone = lab.engine.list_groups()
        assert {g.uuid for g in everyone} == {g.uuid for g in repo.groups()}
        some = [listed[2].uuid, listed[0].uuid, listed[2].uuid, "f" * 32]
        assert [g.uuid for g in load_groups(repo, some)] == some[:2]
        assert load_groups(repo, []) == []


def test_sqlite_store_is_wal_and_gets_missing_indexes(tmp_path: Path) -> None:
    path = tmp_path / "store" / "snapgroup.db"
    Database(f"sqlite:///{path}").dispose()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.execute("DROP INDEX ix_volume_parent_snapshot_uuid")  # a store made before it
        conn.execute("DROP TABLE schema_stamp")  # and before the schema stamp
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


def _plan_or_error(plan: Callable[[], MergePlan]) -> object:
    try:
        p = plan()
    except OperationError as exc:
        return exc.details
    child = p.child_snapshot.uuid if p.child_snapshot is not None else None
    detached = [s.uuid for s in p.detached]
    return (p.kind, p.top, p.base, child, p.above, p.above_all, p.detach, detached, p.parent)


def test_merge_family_and_chains_plan_every_merge_as_the_lineage(lab: Lab) -> None:
    _branched(lab)  # trees, clones of clones: merges of every kind
    with lab.engine.db.transaction() as session:
        repo = Repo(session)
        volumes = list(session.exec(select(VolumeRow)))
        chains = repo.chains(volumes)
        for volume in volumes:
            lineage = repo.lineage(volume)
            targets = [s for s in lineage if s.volume_uuid == volume.uuid]
            family = repo.merge_family(targets)
            for target in targets:
                whole = partial(plan_merge, volume, lineage, target)
                part = partial(
                    plan_merge, volume, family[target.uuid], target, chain=chains[volume.uuid]
                )
                assert _plan_or_error(part) == _plan_or_error(whole)
        assert repo.merge_family([]) == {}


def test_chain_links_name_the_volumes_of_the_lineage(lab: Lab) -> None:
    """pinned_snapshots reads a lineage's volumes: deleting reads them from Repo.chains."""
    _branched(lab)
    with lab.engine.db.transaction() as session:
        repo = Repo(session)
        volumes = list(session.exec(select(VolumeRow)))
        chains = repo.chains(volumes)
        for volume in volumes:
            expected = {s.volume_uuid for s in repo.lineage(volume)}
            assert {link.volume_uuid for link in chains[volume.uuid]} == expected


def test_volumes_loaded_with_refs_are_looked_up_without_a_query(lab: Lab) -> None:
    group = history(lab, n=1)[0]
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(statement)

    with lab.engine.db.transaction() as session:
        repo = Repo(session)
        refs = repo.refs_with_snapshots([group.uuid])
        gc.collect()  # the session holds loaded rows weakly: only Repo keeps them
        event.listen(session.get_bind(), "before_cursor_execute", seen)
        try:
            assert all(repo.volume(s.volume_uuid) is not None for _r, s in refs)
        finally:
            event.remove(session.get_bind(), "before_cursor_execute", seen)
    assert refs and statements == []
