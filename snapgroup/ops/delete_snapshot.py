"""Volume snapshots as objects of their own: list a VM's, delete one alone.

Deleting one snapshot merges it away exactly like a group delete does (the same plan and
the same re-entrant Merger), then marks it deleted: its group ref stays, with
snapshotDeleted=true, and the group becomes unavailable (`check` says why).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from snapgroup.domain.errors import DeleteFailed, NotFound, OperationError, SnapgroupError
from snapgroup.domain.inventory import DeleteResult, zstack_date
from snapgroup.domain.models import DomainInfo
from snapgroup.domain.planner import apply_merge, plan_merge
from snapgroup.domain.validate import parse_uuid
from snapgroup.engine import Engine
from snapgroup.infra.locks import vm_lock
from snapgroup.ops.delete import DeleteMode, PendingMerge, mark_changed
from snapgroup.ops.journal import DONE, FAILED
from snapgroup.ops.lineage import pinned_snapshots
from snapgroup.ops.merging import Merger, MergeSpec
from snapgroup.ops.resolve import resolve_vm
from snapgroup.ops.syncing import sync_locked
from snapgroup.ports import ProgressFn
from snapgroup.store.repo import Repo

KIND = "delete-snapshot"


@dataclass(frozen=True)
class SnapshotView:
    uuid: str
    name: str
    volume_uuid: str
    volume_name: str
    volume_type: str
    target: str
    vm_uuid: str
    parent_uuid: str | None
    install_path: str
    group_uuid: str | None
    latest: bool  # the volume's current top sits on it
    create_date: datetime
    last_op_date: datetime
    changed: str | None = None  # SnapshotRow.changed: the file no longer holds its point

    def to_inventory(self) -> dict[str, Any]:
        """ZStack's VolumeSnapshotInventory, the fields that mean something here."""
        return {
            "uuid": self.uuid,
            "name": self.name,
            "type": "Hypervisor",
            "volumeUuid": self.volume_uuid,
            "volumeType": self.volume_type,
            "parentUuid": self.parent_uuid,
            "primaryStorageInstallPath": self.install_path,
            "format": "qcow2",
            "latest": self.latest,
            "state": "Enabled",
            "status": "Changed" if self.changed else "Ready",
            "statusReason": self.changed,
            "groupUuid": self.group_uuid,
            "createDate": zstack_date(self.create_date),
            "lastOpDate": zstack_date(self.last_op_date),
        }


def list_snapshots(engine: Engine, vm: str) -> list[SnapshotView]:
    """Every live snapshot of every volume the VM has had, by deviceId then age."""
    vm_uuid, _domain = resolve_vm(engine, vm)
    views = []
    with engine.db.transaction() as session:
        repo = Repo(session)
        for volume in repo.volumes_of_vm(vm_uuid):
            snapshots = sorted(
                repo.snapshots_of_volume(volume.uuid), key=lambda s: (s.create_date, s.uuid)
            )
            for s in snapshots:
                ref = repo.ref(s.uuid)
                views.append(
                    SnapshotView(
                        uuid=s.uuid,
                        name=s.name,
                        volume_uuid=volume.uuid,
                        volume_name=volume.name,
                        volume_type=volume.volume_type,
                        target=volume.target,
                        vm_uuid=vm_uuid,
                        parent_uuid=s.parent_uuid,
                        install_path=s.install_path,
                        group_uuid=ref.group_uuid if ref else None,
                        latest=volume.parent_snapshot_uuid == s.uuid,
                        create_date=s.create_date,
                        last_op_date=s.last_op_date,
                        changed=s.changed,
                    )
                )
    return views


def delete_snapshot(
    engine: Engine,
    snapshot_uuid: str,
    *,
    mode: DeleteMode | str = DeleteMode.PERMISSIVE,
    progress: ProgressFn | None = None,
) -> DeleteResult:
    """Permissive refuses (OperationError) when the merge cannot or should not be done;
    Enforcing returns a failed result instead. Never breaks a chain in either mode."""
    uuid = parse_uuid(snapshot_uuid, "snapshot uuid")
    mode = DeleteMode.parse(mode)
    with engine.db.transaction() as session:
        repo = Repo(session)
        snapshot = repo.snapshot(uuid)
        volume = repo.volume(snapshot.volume_uuid) if snapshot is not None else None
    if snapshot is None or volume is None:
        raise NotFound(f"volume snapshot {uuid} not found")
    engine.check_owner(volume.vm_uuid)
    with vm_lock(volume.vm_uuid, wait=engine.lock_wait):
        return _delete_locked(engine, uuid, volume.vm_uuid, mode, progress)


def _delete_locked(
    engine: Engine, uuid: str, vm_uuid: str, mode: DeleteMode, progress: ProgressFn | None
) -> DeleteResult:
    domain = engine._domain_for_delete(vm_uuid, mode)
    sync_locked(engine, vm_uuid, domain)
    with engine.db.transaction() as session:
        repo = Repo(session)
        snapshot = repo.snapshot(uuid)
        assert snapshot is not None
        volume = repo.volume(snapshot.volume_uuid)
        merge = PendingMerge(repo.ref(uuid), snapshot, volume)
        lineage = repo.lineage(volume) if volume is not None else []
        pinned = pinned_snapshots(repo)
    if snapshot.deleted:
        return DeleteResult(uuid, snapshot.volume_uuid, True)  # deleted before: nothing to do
    engine._check_merge(merge, domain, lineage, pinned)
    engine._check_space([merge], domain is not None and domain.state.is_live, mode)
    problem = merge.blocking or (merge.refusable if mode is DeleteMode.PERMISSIVE else None)
    if problem is not None and mode is DeleteMode.PERMISSIVE:
        raise OperationError(f"cannot delete snapshot: {problem}")
    if merge.plan is None or volume is None or problem is not None:
        return DeleteResult(
            uuid, snapshot.volume_uuid, False, DeleteFailed(problem or "not merged")
        )
    live = domain is not None and domain.state.is_live
    spec = MergeSpec.of(merge.plan, volume.target)
    plan = {"snapshot_uuid": uuid, "live": live, "merge": asdict(spec)}
    group_uuid = merge.ref.group_uuid if merge.ref else None
    op = engine.journal.begin(KIND, vm_uuid, plan, group_uuid=group_uuid)
    return _finish(engine, op, vm_uuid, live, spec, progress)


def _finish(
    engine: Engine,
    op: str,
    vm_uuid: str,
    live: bool,
    spec: MergeSpec,
    progress: ProgressFn | None,
) -> DeleteResult:
    try:
        Merger(engine.hv, engine.images, engine.journal, kind=KIND).finish(
            op, vm_uuid, live, spec, progress
        )
    except SnapgroupError as exc:
        # The Merger leaves a whole tree when it fails; the metadata still describes it,
        # and says so where a commit began writing into the snapshot's file.
        with engine.db.transaction() as session:
            changed = mark_changed(
                Repo(session), op, set(), {spec.snapshot_uuid: exc}, engine.clock()
            )
            engine.journal.close(op, FAILED, detail=f"merge failed: {exc.details}", session=session)
        what = "merge failed"
        if spec.snapshot_uuid in changed:
            what += f" and its file was changed ({changed[spec.snapshot_uuid]})"
        error = DeleteFailed(f"snapshot {spec.snapshot_uuid}: {what}", cause=exc)
        return DeleteResult(spec.snapshot_uuid, spec.volume_uuid, False, error)
    _record(engine, op, spec.snapshot_uuid)
    return DeleteResult(spec.snapshot_uuid, spec.volume_uuid, True)


def _record(engine: Engine, op: str, uuid: str) -> None:
    """The chain moves, the snapshot marked deleted (its ref says so) and the journal's
    'done': one transaction."""
    now = engine.clock()
    with engine.db.transaction() as session:
        repo = Repo(session)
        snapshot = repo.snapshot(uuid)
        volume = repo.volume(snapshot.volume_uuid) if snapshot is not None else None
        if snapshot is not None and volume is not None and not snapshot.deleted:
            plan = plan_merge(volume, repo.lineage(volume), snapshot)
            apply_merge(volume, plan)
            volume.last_op_date = now
            for row in (plan.child_snapshot, *plan.detached):
                if row is not None:
                    row.last_op_date = now
                    repo.add(row)
            snapshot.deleted = True
            snapshot.last_op_date = now
            repo.add(volume, snapshot)
            ref = repo.ref(uuid)
            group = repo.group(ref.group_uuid) if ref is not None else None
            if ref is not None and group is not None:
                ref.last_op_date = group.last_op_date = now
                repo.add(ref, group)
        engine.journal.close(op, DONE, session=session)


def recover_delete_snapshot(
    engine: Engine, op: str, plan: dict[str, Any], domain: DomainInfo
) -> None:
    """Roll forward: the Merger finishes from whatever step it was cut at."""
    _finish(engine, op, domain.uuid, domain.state.is_live, MergeSpec(**plan["merge"]), None)
