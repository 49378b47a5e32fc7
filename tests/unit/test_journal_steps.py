"""A journal step longer than the store's column (a prune's `commit <backup>/<volume>`
is 71 characters) is kept cut, on SQLite as on PostgreSQL (which refused it: the prune
failed with a StoreError there)."""

from __future__ import annotations

from datetime import UTC, datetime

from snapgroup.ops.journal import STEP_MAX, Journal
from snapgroup.store.db import Database


def test_a_long_step_is_kept_cut(store: Database) -> None:
    journal = Journal(store, lambda: datetime(2026, 12, 1, tzinfo=UTC), lambda: "e" * 32, host="h")
    op = journal.begin("prune-backups", "a" * 32, {})
    step = f"commit {'b' * 32}/{'c' * 32}"
    journal.step(op, "prune-backups", step)
    with store.transaction() as session:
        from snapgroup.store.operations import OperationRepo

        row = OperationRepo(session).get(op)
    assert row is not None
    assert row.step == step[: STEP_MAX - 3] + "..." and len(row.step) == STEP_MAX
