"""Use cases: create, show, list, update and delete snapshot groups, and recovery.
Orchestration only: decisions live in planner.py, I/O behind the ports, rows in
store/. Create and delete steps live in creating.py and deleting.py."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from snapgroup.domain.errors import (
    InvalidArgument,
    NotFound,
)
from snapgroup.domain.inventory import DeleteResult, Group, VolumeView
from snapgroup.domain.validate import parse_uuid, validate_description, validate_name
from snapgroup.domain.zquery import Query
from snapgroup.infra.locks import try_vm_lock
from snapgroup.ops.context import EngineCore, load_groups
from snapgroup.ops.create import MAX_CHAIN_DEPTH, CreateSteps
from snapgroup.ops.delete import DeleteMode, DeleteSteps
from snapgroup.ops.journal import FAILED, Journal
from snapgroup.ops.querying import GroupPage, query_groups
from snapgroup.store.repo import OperationRepo, Repo
from snapgroup.store.tables import OperationRow

if TYPE_CHECKING:
    from snapgroup.ops.revert import RevertReport

__all__ = ["MAX_CHAIN_DEPTH", "DeleteMode", "Engine", "EngineCore"]

# Journal kinds whose recovery lives in snapgroup.lifecycle (revert, clone, one snapshot).
_LIFECYCLE_KINDS = frozenset({"revert", "clone", "delete-snapshot"})


class Engine(CreateSteps, DeleteSteps):
    def volumes(self, vm: str) -> list[VolumeView]:
        return self._discover(self.hv.lookup(vm)).views()

    def query_groups(self, query: Query) -> GroupPage:
        """One page of the groups a ZStack query matches, selected in SQL."""
        return query_groups(self.db, query)

    def delete_snapshot(
        self, snapshot_uuid: str, *, mode: DeleteMode | str = DeleteMode.PERMISSIVE
    ) -> DeleteResult:
        """One volume snapshot merged away alone (snapgroup.ops.delete_snapshot.delete_snapshot)."""
        from snapgroup.ops.delete_snapshot import delete_snapshot  # it imports this module

        return delete_snapshot(self, snapshot_uuid, mode=mode)

    def revert_volume(self, snapshot_uuid: str) -> RevertReport:
        """ZStack's RevertVolumeFromSnapshot where a group revert serves it: the
        snapshot's volume alone restored from its group (snapgroup.ops.revert: the VM must be
        stopped; a safety group of the current state first). An ungrouped snapshot is
        refused (InvalidArgument): snapgroup reverts to groups."""
        from snapgroup.ops.revert import revert  # it imports this module

        uuid = parse_uuid(snapshot_uuid, "snapshot uuid")
        with self.db.transaction() as session:
            repo = Repo(session)
            snapshot, ref = repo.snapshot(uuid), repo.ref(uuid)
        if snapshot is None or snapshot.deleted:
            raise NotFound(f"volume snapshot {uuid} not found")
        if ref is None:
            raise InvalidArgument(
                f"volume snapshot {uuid} is in no group: only a group's can be reverted to"
            )
        return revert(self, ref.group_uuid, volumes=[snapshot.volume_uuid])

    def update(
        self, group_uuid: str, *, name: str | None = None, description: str | None = None
    ) -> Group:
        uuid = parse_uuid(group_uuid, "group uuid")
        if name is not None:
            name = validate_name(name)
        description = validate_description(description)
        with self.db.transaction() as session:
            repo = Repo(session)
            row = repo.group(uuid)
            if row is None:
                raise NotFound(f"snapshot group {uuid} not found")
            self.check_owner(row.vm_uuid, repo)
            if name is not None:
                row.name = name
            if description is not None:
                row.description = description
            row.last_op_date = self.clock()
            repo.add(row)
            return load_groups(repo, [uuid])[0]

    def recover(self) -> list[OperationRow]:
        """Finish or roll back every interrupted operation of this host whose VM lock is
        free (a held lock means its process is still at work). Idempotent."""
        with self.db.transaction() as session:
            pending = OperationRepo(session).unfinished(host=self.journal.host)
        recovered = []
        for row in pending:
            fd = try_vm_lock(row.vm_uuid)
            if fd is None:
                continue
            try:
                with self.db.transaction() as session:
                    fresh = OperationRepo(session).get(row.uuid)
                if fresh is None or fresh.state != "running":
                    continue
                self._recover_one(fresh)
                with self.db.transaction() as session:
                    after = OperationRepo(session).get(row.uuid)
                recovered.append(after or fresh)
            finally:
                os.close(fd)
        return recovered

    def _recover_one(self, row: OperationRow) -> None:
        plan = Journal.plan_of(row)
        try:
            domain = self.hv.lookup(row.vm_uuid)
        except NotFound:
            self.journal.close(
                row.uuid,
                FAILED,
                detail="recover: the VM no longer exists; its files were left as they are",
            )
            return
        if row.kind == "create":
            self._recover_create(row.uuid, plan, domain)
        elif row.kind == "delete":
            self._recover_delete(row.uuid, plan, domain)
        elif row.kind in _LIFECYCLE_KINDS:
            # Those modules import the engine: imported here, not at module level.
            from snapgroup.lifecycle import recover_lifecycle

            recover_lifecycle(self, row.kind, row.uuid, plan, domain)
        else:
            self.journal.close(row.uuid, FAILED, detail=f"recover: unknown kind {row.kind}")

    def operations(self, *, limit: int = 100) -> list[OperationRow]:
        with self.db.transaction() as session:
            return OperationRepo(session).recent(limit=limit)
