"""Snapshot policies and group marks in the store (store/policy_repo.py), on SQLite and
PostgreSQL (the `store` fixture), and an older store gaining the new columns."""

from __future__ import annotations

import itertools
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect

from snapgroup.domain.errors import InvalidArgument, NotFound
from snapgroup.domain.retention import AutoGroup, Policy, Retention, plan_prune
from snapgroup.store.db import Database
from snapgroup.store.policy_repo import PolicyRepo, decode_marks, encode_marks
from snapgroup.store.tables import GroupRow

T0 = datetime(2026, 12, 1, 14, 0, tzinfo=UTC)
_ids = itertools.count(1)


def _uuid() -> str:
    return f"{next(_ids):032x}"


def _group(db: Database, vm: str, name: str, when: datetime) -> str:
    uuid = _uuid()
    with db.transaction() as session:
        session.add(GroupRow(uuid=uuid, name=name, vm_uuid=vm, create_date=when, last_op_date=when))
    return uuid


HOURLY = Policy("hourly", Retention(hourly=24, daily=7), vms=("vm1", "b" * 32))
ALL = Policy(
    "all-but-db",
    Retention(frequent=4, every=30, monthly=3),
    exclude=("db",),
    consistency="crash",
    min_free_percent=12.5,
)


def test_policies_round_trip(store: Database) -> None:
    with store.transaction() as session:
        repo = PolicyRepo(session)
        rec, new = repo.put(HOURLY, now=T0, new_uuid=_uuid)
        assert new and rec.policy == HOURLY and rec.create_date == T0
        _, new = repo.put(ALL, now=T0, new_uuid=_uuid, export_to="/backup", export_keep=2)
        assert new
    with store.transaction() as session:
        repo = PolicyRepo(session)
        assert [r.policy for r in repo.all()] == [ALL, HOURLY]  # by name
        got = repo.get("all-but-db")
        assert got.policy == ALL and (got.export_to, got.export_keep) == ("/backup", 2)
        assert got.policy.vms is None and got.policy.min_free_percent == 12.5
        assert [p.name for p in repo.covering("a" * 32, "vm1")] == ["all-but-db", "hourly"]
        assert [p.name for p in repo.covering("b" * 32, "db")] == ["hourly"]
        assert repo.covering("c" * 32, "db") == []


def test_set_again_replaces_the_settings_and_keeps_the_creation_date(store: Database) -> None:
    with store.transaction() as session:
        PolicyRepo(session).put(HOURLY, now=T0, new_uuid=_uuid)
    changed = Policy("hourly", Retention(hourly=2), vms=None, exclude=("vm9",))
    later = T0 + timedelta(hours=1)
    with store.transaction() as session:
        rec, new = PolicyRepo(session).put(changed, now=later, new_uuid=_uuid)
        assert not new and rec.policy == changed
    with store.transaction() as session:
        (rec,) = PolicyRepo(session).all()
        assert rec.policy == changed
        assert rec.create_date.replace(tzinfo=UTC) == T0
        assert rec.last_op_date.replace(tzinfo=UTC) == later


def test_bad_policies_leave_the_store_unchanged(store: Database) -> None:
    with store.transaction() as session:
        PolicyRepo(session).put(HOURLY, now=T0, new_uuid=_uuid)
    bad = [
        (Policy("hourly", Retention()), "keeps nothing"),
        (Policy("x", Retention(hourly=1)), "--export-keep needs --export-to"),
    ]
    for policy, message in bad:
        with pytest.raises(InvalidArgument, match=message), store.transaction() as session:
            PolicyRepo(session).put(policy, now=T0, new_uuid=_uuid, export_keep=3)
    with (
        pytest.raises(InvalidArgument, match="--export-compress needs --export-to"),
        store.transaction() as session,
    ):
        PolicyRepo(session).put(HOURLY, now=T0, new_uuid=_uuid, export_compress=True)
    with store.transaction() as session:
        assert [r.policy for r in PolicyRepo(session).all()] == [HOURLY]


def test_remove_keeps_the_groups_and_their_marks(store: Database) -> None:
    g = _group(store, "a" * 32, "auto-hourly-2026-12-01T14:00Z", T0)
    with store.transaction() as session:
        repo = PolicyRepo(session)
        repo.put(HOURLY, now=T0, new_uuid=_uuid)
        repo.mark(g, policies=["hourly", "all-but-db"], label="hourly")
    with store.transaction() as session:
        PolicyRepo(session).remove("hourly")
    with store.transaction() as session:
        repo = PolicyRepo(session)
        with pytest.raises(NotFound, match="no snapshot policy named 'hourly'"):
            repo.get("hourly")
        with pytest.raises(NotFound):
            repo.remove("hourly")
        (marks,) = repo.groups_of("a" * 32)
        assert marks.policies == {"hourly", "all-but-db"} and marks.label == "hourly"


def test_group_marks_and_protection(store: Database) -> None:
    vm = "a" * 32
    hand = _group(store, vm, "by-hand", T0)
    auto = [_group(store, vm, f"auto-{h}", T0 + timedelta(hours=h)) for h in (1, 2, 3)]
    other_vm = _group(store, "b" * 32, "elsewhere", T0)
    with store.transaction() as session:
        repo = PolicyRepo(session)
        for g in auto:
            repo.mark(g, policies=["p"], label="hourly")
        repo.set_protected(auto[0], True)
        with pytest.raises(NotFound, match="no snapshot group"):
            repo.mark("f" * 32, policies=["p"], label="hourly")
    with store.transaction() as session:
        marks = PolicyRepo(session).groups_of(vm)
    assert [m.uuid for m in marks] == [hand, *auto]  # oldest first; not the other VM's
    assert other_vm not in {m.uuid for m in marks}
    assert marks[0].policies == frozenset() and not marks[0].protected and marks[0].label is None
    assert [m.protected for m in marks[1:]] == [True, False, False]
    # what the store gives is what retention needs: hourly=1 prunes the unprotected older
    groups = [AutoGroup(m.uuid, m.create_date, m.policies, m.protected) for m in marks]
    doomed = plan_prune([Policy("p", Retention(hourly=1))], groups)
    assert [g.uuid for g in doomed] == [auto[1]]
    with store.transaction() as session:
        PolicyRepo(session).set_protected(auto[0], False)
        assert not PolicyRepo(session).groups_of(vm)[1].protected


def test_marks_encoding() -> None:
    assert encode_marks(["b", "a", "b"]) == "a,b"
    assert decode_marks("a,b") == {"a", "b"}
    assert decode_marks(None) == decode_marks("") == frozenset()


def test_an_older_store_gains_the_policy_table_and_group_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    Database(f"sqlite:///{path}").dispose()
    with sqlite3.connect(path) as conn:  # as a store made before policies existed
        conn.execute("DROP TABLE snapshot_policy")
        conn.execute("DROP TABLE schema_stamp")  # and before the schema stamp
        for column in ("policy", "policy_label", "protected"):
            conn.execute(f"ALTER TABLE volume_snapshot_group DROP COLUMN {column}")
        conn.execute(
            "INSERT INTO volume_snapshot_group (uuid, name, vm_uuid, create_date, last_op_date)"
            " VALUES ('g1', 'old', 'vm', '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
        )
    db = Database(f"sqlite:///{path}")
    try:
        with db.transaction() as session:
            names = {
                c["name"]
                for c in inspect(session.connection()).get_columns("volume_snapshot_group")
            }
            assert {"policy", "policy_label", "protected"} <= names
            repo = PolicyRepo(session)
            (old,) = repo.groups_of("vm")
            assert old.policies == frozenset() and not old.protected  # made by hand
            repo.put(HOURLY, now=T0, new_uuid=_uuid)
            assert repo.get("hourly").policy == HOURLY
    finally:
        db.dispose()
