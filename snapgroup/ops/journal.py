"""The operation journal. Each step is committed before the work it names, so that a
process killed anywhere leaves a record `recover` can finish from.

Named steps double as fault-injection points: SNAPGROUP_FAULT_STEP=create:switched kills
the process with SIGKILL the first time that step is reached ("delete:merged@2": the
second time). Lab tests use it to prove recovery at every step.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from datetime import datetime
from typing import Any

from snapgroup.infra.host import local_host
from snapgroup.store.db import Database, Session
from snapgroup.store.operations import OperationRepo
from snapgroup.store.tables import OperationRow

FAULT_ENV = "SNAPGROUP_FAULT_STEP"
RUNNING, DONE, FAILED, ROLLED_BACK = "running", "done", "failed", "rolled-back"
_hits: dict[str, int] = {}
# Plan keys naming a file a tool is about to write in place (the value: its path), put
# in the plan by the step before the tool starts. A tool killed mid-write may leave
# leaked clusters there, which recovery frees (ops/leaks.py). WRITING + a snapshot's
# uuid: a commit into its file (its data changes: ops/merge_checks.py); REBASING + a
# snapshot's uuid: a safe rebase of its file (its view stays the same).
WRITING, REBASING = "writing:", "rebasing:"


STEP_MAX = 64  # the operation table's step column


def _fit(step: str) -> str:
    """A step as the store keeps it: a long one (a prune's `rename <backup>/<volume>`)
    is cut to the column, its head kept (what is done, then on what)."""
    return step if len(step) <= STEP_MAX else step[: STEP_MAX - 3] + "..."


def written_files(plan: dict[str, Any]) -> list[str]:
    """Every file the journaled operation began writing in place, once each."""
    found = [v for k, v in plan.items() if k.startswith((WRITING, REBASING))]
    return list(dict.fromkeys(found))


def checkpoint(name: str) -> None:
    wanted = os.environ.get(FAULT_ENV)
    if not wanted:
        return
    step, _, nth = wanted.partition("@")
    if step != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


class Journal:
    def __init__(
        self,
        db: Database,
        clock: Callable[[], datetime],
        new_uuid: Callable[[], str],
        *,
        host: str | None = None,
    ):
        self.db = db
        self.clock = clock
        self.new_uuid = new_uuid
        self.host = host or local_host()  # recover finishes only this host's operations

    def begin(
        self, kind: str, vm_uuid: str, plan: dict[str, Any], *, group_uuid: str | None = None
    ) -> str:
        now, uuid = self.clock(), self.new_uuid()
        row = {
            "uuid": uuid,
            "kind": kind,
            "vm_uuid": vm_uuid,
            "group_uuid": group_uuid,
            "state": RUNNING,
            "step": "begin",
            "plan": json.dumps(plan),
            "detail": None,
            "host": self.host,
            "pid": os.getpid(),
            "started": now,
            "updated": now,
        }
        with self.db.transaction() as session:
            OperationRepo(session).insert(row)
        checkpoint(f"{kind}:begin")
        return uuid

    def step(self, op_uuid: str, kind: str, step: str, **plan_update: Any) -> None:
        """Record that `step` is about to be done (or was just done: the name says).
        Its own commit, by primary key: the plan is read only when it changes."""
        with self.db.transaction() as session:
            journal = OperationRepo(session)
            values: dict[str, Any] = {"step": _fit(step), "updated": self.clock()}
            if plan_update:
                plan = journal.plan(op_uuid)
                assert plan is not None
                values["plan"] = json.dumps({**json.loads(plan), **plan_update})
            journal.update(op_uuid, values)
        checkpoint(f"{kind}:{step.partition(' ')[0]}")

    def point(self, kind: str, step: str) -> None:
        """A fault-injection point with no journal write: inside a create's freeze
        window, where a store commit would only lengthen the guest's stall."""
        checkpoint(f"{kind}:{step}")

    def close(
        self,
        op_uuid: str,
        state: str,
        *,
        detail: str | None = None,
        session: Session | None = None,
        step: str | None = None,
    ) -> None:
        """End the operation; inside the caller's transaction when given, so the
        metadata change and the journal's 'done' commit together. `step`: the last
        step reached, recorded with the end (a step of no use to recovery, that would
        cost a commit of its own: a create's "switched")."""
        if session is None:
            with self.db.transaction() as own:
                self.close(op_uuid, state, detail=detail, session=own, step=step)
            return
        values = {"state": state, "detail": detail, "updated": self.clock()}
        if step is not None:
            values["step"] = _fit(step)
        OperationRepo(session).update(op_uuid, values)

    def note(self, op_uuid: str, text: str) -> None:
        """Add `text` to the operation's detail (what its recovery did besides)."""
        with self.db.transaction() as session:
            journal = OperationRepo(session)
            row = journal.get(op_uuid)
            if row is not None:
                detail = f"{row.detail}; {text}" if row.detail else text
                journal.update(op_uuid, {"detail": detail, "updated": self.clock()})

    @staticmethod
    def plan_of(row: OperationRow) -> dict[str, Any]:
        plan: dict[str, Any] = json.loads(row.plan)
        return plan
