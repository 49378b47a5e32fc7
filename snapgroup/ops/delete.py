"""Delete: check (Permissive refuses), merge each snapshot out of its chain, record;
and the recovery of a delete."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from snapgroup.domain.errors import (
    DeleteFailed,
    InvalidArgument,
    NotFound,
    OperationError,
    SnapgroupError,
)
from snapgroup.domain.inventory import DeleteReport, DeleteResult
from snapgroup.domain.models import ChainSnapshot, DomainInfo, VmState
from snapgroup.domain.planner import (
    MergePlan,
    apply_merge,
    expected_chain,
    merge_room,
    plan_merge,
)
from snapgroup.domain.validate import parse_uuid
from snapgroup.infra.locks import vm_lock
from snapgroup.ops.context import EngineCore
from snapgroup.ops.journal import DONE
from snapgroup.ops.lineage import pinned_snapshots
from snapgroup.ops.merging import Merger, MergeSpec, merging_into
from snapgroup.ports import ProgressFn
from snapgroup.store.repo import ChainLink, OperationRepo, Repo
from snapgroup.store.tables import RefRow, SnapshotRow, VolumeRow


class DeleteRefused(OperationError):
    """A Permissive delete refused before changing anything. `report`: every ref's
    result, each saying why (the report's error is this one)."""

    def __init__(self, details: str, group_uuid: str, results: Sequence[DeleteResult]) -> None:
        super().__init__(details)
        self.report = DeleteReport(group_uuid, tuple(results), refusal=self)


class DeleteMode(StrEnum):
    PERMISSIVE = "Permissive"
    ENFORCING = "Enforcing"

    @classmethod
    def parse(cls, value: str | DeleteMode) -> DeleteMode:
        for mode in cls:
            if value == mode or str(value).lower() == mode.value.lower():
                return mode
        raise InvalidArgument(f"deleteMode {value!r} is not Permissive or Enforcing")


@dataclass
class PendingMerge:
    """One snapshot being deleted (with its group ref, if any): what to merge, or why not."""

    ref: RefRow | None
    snapshot: SnapshotRow
    volume: VolumeRow | None
    plan: MergePlan | None = None
    blocking: str | None = None  # never merged, in any mode: it could break the chain
    refusable: str | None = None  # Permissive refuses; Enforcing goes ahead


class DeleteSteps(EngineCore):
    def delete(
        self,
        group_uuid: str,
        *,
        mode: DeleteMode | str = DeleteMode.PERMISSIVE,
        progress: ProgressFn | None = None,
    ) -> DeleteReport:
        uuid = parse_uuid(group_uuid, "group uuid")
        mode = DeleteMode.parse(mode)
        with self.db.transaction() as session:
            group = Repo(session).group(uuid)
        if group is None:
            return DeleteReport(uuid, ())  # idempotent, as in ZStack
        self.check_owner(group.vm_uuid)
        with vm_lock(group.vm_uuid, wait=self.lock_wait):
            return self._delete_locked(uuid, group.vm_uuid, mode, progress)

    def _delete_locked(
        self, uuid: str, vm_uuid: str, mode: DeleteMode, progress: ProgressFn | None
    ) -> DeleteReport:
        try:
            self._sync(vm_uuid, self.hv.lookup(vm_uuid))
        except NotFound:
            self._sync(vm_uuid, None)
        with self.db.transaction() as session:
            repo = Repo(session)
            if repo.group(uuid) is None:
                return DeleteReport(uuid, ())  # deleted while we waited for the lock
            merges = [
                PendingMerge(ref, snap, repo.volume(snap.volume_uuid))
                for ref, snap in repo.refs_with_snapshots([uuid])
            ]
            chains = repo.chains([m.volume for m in merges if m.volume is not None])
            family = repo.merge_family([m.snapshot for m in merges if not m.snapshot.deleted])
            pinned = pinned_snapshots(repo, _lineage_volumes(repo, merges, chains))
        domain = self._domain_for_delete(vm_uuid, mode)
        live = domain is not None and domain.state.is_live
        for m in merges:
            chain = chains.get(m.snapshot.volume_uuid, [])
            self._check_merge(m, domain, family.get(m.snapshot.uuid, []), pinned, chain=chain)
        self._check_space(merges, live, mode)
        if mode is DeleteMode.PERMISSIVE:
            problems = [p for m in merges for p in (m.blocking, m.refusable) if p]
            if problems:
                raise _refused(uuid, merges, problems)
        specs = {
            m.snapshot.uuid: MergeSpec.of(m.plan, m.volume.target)
            for m in merges
            if m.plan is not None and m.volume is not None
        }
        plan = {
            "group_uuid": uuid,
            "mode": mode.value,
            "live": live,
            "merges": [asdict(spec) for spec in specs.values()],
            "noop": [m.snapshot.uuid for m in merges if m.snapshot.deleted],
            "total": len(merges),
        }
        op = self.journal.begin("delete", vm_uuid, plan, group_uuid=uuid)
        merged = self._run_merges(op, vm_uuid, live, list(specs.values()), progress)
        results = []
        for m in merges:
            if m.snapshot.deleted:
                results.append(DeleteResult(m.snapshot.uuid, m.snapshot.volume_uuid, True))
            elif m.snapshot.uuid not in merged:
                error = DeleteFailed(m.blocking or "not merged")
                results.append(DeleteResult(m.snapshot.uuid, m.snapshot.volume_uuid, False, error))
            else:
                results.append(merged[m.snapshot.uuid])
        succeeded = [r.snapshot_uuid for r in results if r.success]
        changed = self._record_delete(op, uuid, succeeded, len(merges), mode, merged)
        return DeleteReport(uuid, tuple(_name_changed(r, changed, uuid) for r in results))

    def _domain_for_delete(self, vm_uuid: str, mode: DeleteMode) -> DomainInfo | None:
        try:
            domain = self.hv.lookup(vm_uuid)
        except NotFound:
            if mode is DeleteMode.ENFORCING:
                return None
            raise OperationError(
                f"VM {vm_uuid} no longer exists; Enforcing mode drops the group's metadata "
                "and leaves its files"
            ) from None
        if domain.state is VmState.OTHER:
            raise OperationError(f"VM {domain.name} is neither running, paused nor stopped")
        return domain

    def _check_merge(
        self,
        m: PendingMerge,
        domain: DomainInfo | None,
        lineage: Sequence[SnapshotRow],
        pinned: dict[str, str] | None = None,
        *,
        chain: Sequence[ChainSnapshot] | None = None,
    ) -> None:
        """Fill in m.plan, or the reason it must not (blocking) or should not (refusable)
        be merged. `pinned`: snapshots a clone reads (lineage.pinned_snapshots). `lineage`:
        the volume's; or, with `chain` (Repo.chains), what plan_merge names of it."""
        sid = m.snapshot.uuid
        if m.snapshot.deleted:
            return  # nothing left to merge
        if domain is None:
            m.blocking = f"snapshot {sid}: the VM no longer exists"
            return
        volume = m.volume
        disk = next((d for d in domain.disks if volume and d.target == volume.target), None)
        if volume is None or not volume.attached or disk is None:
            m.blocking = f"snapshot {sid}: its volume is not attached to the VM"
            return
        if disk.path != volume.install_path:
            m.blocking = (
                f"snapshot {sid}: disk {disk.target} is on {disk.path}, "
                f"the metadata says {volume.install_path}"
            )
            return
        try:
            plan = plan_merge(volume, lineage, m.snapshot, pinned=pinned, chain=chain or ())
            # Every file the merge reads or writes, on any branch of the tree: a missing
            # one (moved away behind our back) is that snapshot's failure, not the group's.
            for path in _plan_files(plan):
                if not self.images.exists(path):
                    raise OperationError(f"file {path} is missing")
            self._verify_real_chain(
                volume, lineage if chain is None else chain, domain.state.is_live
            )
        except SnapgroupError as exc:
            m.blocking = f"snapshot {sid}: {exc.details}"
            return
        m.plan = plan

    def _check_space(self, merges: Sequence[PendingMerge], live: bool, mode: DeleteMode) -> None:
        """What every merge of one delete may write to a filesystem (data and qcow2
        metadata: planner.merge_room) must fit in its free space together: a running VM's
        disks merge side by side, a stopped one's before the space of the files removed
        is back. Permissive refuses (refusable, with the figures). Enforcing never starts
        a merge that could run dry halfway (that would change the snapshot's file): it
        starts those that fit, in order, and fails the others with the figures."""
        demand: dict[int, tuple[str, list[tuple[PendingMerge, int]]]] = {}
        for m in merges:
            if m.plan is None:
                continue
            try:
                for fs, directory, room in self._merge_room(m.plan, live):
                    demand.setdefault(fs, (directory, []))[1].append((m, room))
            except SnapgroupError as exc:
                m.plan, m.blocking = None, f"snapshot {m.snapshot.uuid}: {exc.details}"
        for directory, needs in demand.values():
            free = self.images.free_bytes(directory)
            total = sum(room for _m, room in needs)
            if total <= free:
                continue
            figures = (
                f"the {len(needs)} merge(s) of this delete writing to the filesystem of "
                f"{directory} need {total} bytes together (data and qcow2 metadata), "
                f"{free} free"
            )
            if mode is DeleteMode.PERMISSIVE:
                for m, _room in needs:
                    m.refusable = f"snapshot {m.snapshot.uuid}: {figures}"
                continue
            admitted = 0
            for m, room in needs:
                if m.plan is not None and admitted + room <= free:
                    admitted += room
                elif m.plan is not None:
                    m.plan = None
                    m.blocking = (
                        f"snapshot {m.snapshot.uuid}: not merged, it needs {room} bytes and "
                        f"would not fit ({figures})"
                    )

    def _merge_room(self, plan: MergePlan, live: bool) -> list[tuple[int, str, int]]:
        """(filesystem, directory, bytes) for each file the merge writes into."""
        rooms = []
        for written, source in plan.writes():
            data = self.images.chain(source, shared=live)[0].actual_size
            room = merge_room(data, self.images.chain(written, shared=live)[0])
            directory = os.path.dirname(written)
            rooms.append((self.images.filesystem(directory), directory, room))
        return rooms

    def _verify_real_chain(
        self, volume: VolumeRow, chain: Sequence[ChainSnapshot], live: bool
    ) -> None:
        expected = expected_chain(volume, chain)
        for path in expected:
            if not self.images.exists(path):
                raise OperationError(f"file {path} is missing")
        actual = [layer.path for layer in self.images.chain(volume.install_path, shared=live)]
        if actual[: len(expected)] != expected:
            raise OperationError(f"real chain {actual} does not match the metadata {expected}")

    def _run_merges(
        self,
        op: str,
        vm_uuid: str,
        live: bool,
        specs: Sequence[MergeSpec],
        progress: ProgressFn | None,
    ) -> dict[str, DeleteResult]:
        """Every merge's result by snapshot uuid. Live, the disks merge side by side
        (Merger.finish_many); offline one after another, since each merge rewrites the
        persistent definition (set_disk_sources), which would race."""
        if not live or len(specs) < 2 or len({s.target for s in specs}) < len(specs):
            return {s.snapshot_uuid: self._run_merge(op, vm_uuid, live, s, progress) for s in specs}
        merger = Merger(self.hv, self.images, self.journal)
        errors = merger.finish_many(op, vm_uuid, live, specs, progress)
        return {s.snapshot_uuid: _result(s, errors[s.snapshot_uuid]) for s in specs}

    def _run_merge(
        self, op: str, vm_uuid: str, live: bool, spec: MergeSpec, progress: ProgressFn | None
    ) -> DeleteResult:
        try:
            Merger(self.hv, self.images, self.journal).finish(op, vm_uuid, live, spec, progress)
        except SnapgroupError as exc:
            return _result(spec, exc)
        return _result(spec, None)

    def _record_delete(
        self,
        op: str,
        uuid: str,
        succeeded: Sequence[str],
        total: int,
        mode: DeleteMode,
        merged: dict[str, DeleteResult] | None = None,
    ) -> dict[str, str]:
        """One transaction: chain moves of the merged snapshots, their rows, the group,
        the snapshots whose files a merge that did not complete wrote into (marked
        changed; returned: uuid -> reason), and the journal's 'done'."""
        now = self.clock()
        with self.db.transaction() as session:
            repo = Repo(session)
            causes = {u: r.error.cause if r.error else None for u, r in (merged or {}).items()}
            changed = mark_changed(repo, op, set(succeeded), causes, now)
            rows = {s.uuid: s for s in repo.snapshots_with_volumes(succeeded)}
            snapshots = [rows[u] for u in succeeded if u in rows and not rows[u].deleted]
            planned = _Planned(repo, snapshots)
            moved: list[VolumeRow | SnapshotRow] = []
            for snapshot in snapshots:
                volume = repo.volume(snapshot.volume_uuid)
                assert volume is not None
                plan = planned.plan(volume, snapshot)
                apply_merge(volume, plan)
                volume.last_op_date = now
                moved.append(volume)
                if plan.child_snapshot is not None:
                    plan.child_snapshot.last_op_date = now
                    moved.append(plan.child_snapshot)
            repo.add(*moved)  # one flush: the UPDATEs of like rows go out as one batch
            repo.delete_snapshots(succeeded)
            group = repo.group(uuid)
            if group is not None:
                if mode is DeleteMode.ENFORCING or len(succeeded) == total:
                    repo.delete_group(uuid)
                else:
                    group.last_op_date = now
                    repo.add(group)
            self.journal.close(op, DONE, session=session)
        return changed

    def _recover_delete(self, op: str, plan: dict[str, Any], domain: DomainInfo) -> None:
        """Runs the planned merges again: a commit cut short is finished now; one that
        fails again leaves its snapshot marked changed (_record_delete)."""
        live = domain.state.is_live
        specs = [MergeSpec(**m) for m in plan["merges"]]
        merged = self._run_merges(op, domain.uuid, live, specs, None)
        succeeded = [*plan["noop"], *(u for u, r in merged.items() if r.success)]
        self._record_delete(
            op,
            plan["group_uuid"],
            succeeded,
            plan["total"],
            DeleteMode.parse(plan["mode"]),
            merged,
        )


class _Planned:
    """plan_merge for snapshots recorded one after another in one transaction, on the
    chains and merge families of all read at once. A volume met again is read again:
    the merge applied before changed its chain."""

    def __init__(self, repo: Repo, snapshots: Sequence[SnapshotRow]) -> None:
        self.repo = repo
        volumes = [v for s in snapshots if (v := repo.volume(s.volume_uuid)) is not None]
        self.chains = repo.chains(volumes)
        self.family = repo.merge_family(snapshots)
        self.seen: set[str] = set()

    def plan(self, volume: VolumeRow, snapshot: SnapshotRow) -> MergePlan:
        if volume.uuid in self.seen:
            self.chains[volume.uuid] = self.repo.chains([volume])[volume.uuid]
            self.family.update(self.repo.merge_family([snapshot]))
        self.seen.add(volume.uuid)
        family = self.family[snapshot.uuid]
        return plan_merge(volume, family, snapshot, chain=self.chains[volume.uuid])


def _lineage_volumes(
    repo: Repo, merges: Sequence[PendingMerge], chains: dict[str, list[ChainLink]]
) -> list[list[SnapshotRow]]:
    """What pinned_snapshots reads of the volumes' lineages, the set of volumes their
    snapshots belong to, as one snapshot row of each: the volumes with live snapshots of
    their own, and those their chains go on into (a clone's origin)."""
    own = {m.snapshot.volume_uuid: m.snapshot for m in merges}
    found: dict[str, SnapshotRow] = {}
    for link in (link for chain in chains.values() for link in chain):
        if link.volume_uuid in found:
            continue
        row = own.get(link.volume_uuid) or repo.snapshot(link.uuid)
        if row is not None:
            found[link.volume_uuid] = row
    return [list(found.values())]


def _plan_files(plan: MergePlan) -> list[str]:
    names = [plan.base, plan.top, *plan.above_all, *plan.detach]
    if plan.parent is not None:
        names.append(plan.parent)
    return list(dict.fromkeys(names))


def _refused(uuid: str, merges: Sequence[PendingMerge], problems: Sequence[str]) -> DeleteRefused:
    """Permissive's refusal: nothing was done; each ref's result says why, or that it
    was not attempted because of the others."""
    results = []
    for m in merges:
        sid, vid = m.snapshot.uuid, m.snapshot.volume_uuid
        if m.snapshot.deleted:
            results.append(DeleteResult(sid, vid, True))
            continue
        reason = (
            m.blocking
            or m.refusable
            or (
                f"snapshot {sid}: not attempted: Permissive refused the group delete "
                "(see the other snapshots' results), nothing was changed"
            )
        )
        results.append(DeleteResult(sid, vid, False, DeleteFailed(reason)))
    return DeleteRefused("cannot delete group: " + "; ".join(problems), uuid, results)


def changed_reason(base: str, top: str, error: SnapgroupError | None) -> str:
    why = f": {error.details}" if error is not None else ""
    return (
        f"a merge of {top} into this file ({base}) began and did not complete{why}; the "
        "file holds part of that later layer, no longer this snapshot's point in time"
    )


def mark_changed(
    repo: Repo,
    op: str,
    succeeded: set[str],
    errors: dict[str, SnapgroupError | None],
    now: datetime,
) -> dict[str, str]:
    """Mark every snapshot the journal says a commit began writing into (merging_into)
    whose merge did not complete: its file is no longer its point in time. `errors`: why
    each merge failed, where known. Returns uuid -> the reason recorded."""
    plan: dict[str, Any] = json.loads(OperationRepo(repo.session).plan(op) or "{}")
    specs = [*plan.get("merges", ()), *([plan["merge"]] if "merge" in plan else [])]
    tops = {m["snapshot_uuid"]: m["top"] for m in specs}
    changed: dict[str, str] = {}
    for sid, base in merging_into(plan).items():
        if sid in succeeded:
            continue  # the commit completed and the snapshot is gone: nothing stale left
        row = repo.snapshot(sid)
        if row is None or row.deleted:
            continue
        reason = changed_reason(base, tops.get(sid, "a later layer"), errors.get(sid))
        row.changed, row.last_op_date = reason[:4096], now
        repo.add(row)
        changed[sid] = row.changed
    return changed


def _name_changed(result: DeleteResult, changed: dict[str, str], group: str) -> DeleteResult:
    """A failed result whose snapshot's file was written into says so: the group is no
    longer a valid restore point."""
    reason = changed.get(result.snapshot_uuid)
    if reason is None or result.success:
        return result
    error = DeleteFailed(
        f"snapshot {result.snapshot_uuid}: merge failed and its file was changed ({reason}); "
        f"group {group} is no longer a valid restore point",
        cause=result.error.cause if result.error else None,
    )
    return replace(result, error=error)


def _result(spec: MergeSpec, error: SnapgroupError | None) -> DeleteResult:
    if error is None:
        return DeleteResult(spec.snapshot_uuid, spec.volume_uuid, True)
    failed = DeleteFailed(f"snapshot {spec.snapshot_uuid}: merge failed", cause=error)
    return DeleteResult(spec.snapshot_uuid, spec.volume_uuid, False, failed)
