"""Use cases: create, show, list, update and delete snapshot groups. Orchestration only:
decisions live in planner.py, I/O behind the ports, rows in store/."""

from __future__ import annotations

import json
import os
import uuid as uuidlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from snapgroup.consistency import (
    FREEZE_TIMEOUT_S,
    Consistency,
    ConsistencyRecord,
    FreezeWindow,
    interrupted_record,
    thaw_report,
    thaw_with_retries,
)
from snapgroup.discovery import Discovered, register_volumes
from snapgroup.errors import (
    DeleteFailed,
    HypervisorUnavailable,
    ImageToolError,
    InvalidArgument,
    NotFound,
    OperationError,
    SnapgroupError,
)
from snapgroup.host import local_host
from snapgroup.inventory import DeleteReport, DeleteResult, Group, GroupRef, VolumeView
from snapgroup.journal import DONE, FAILED, ROLLED_BACK, Journal
from snapgroup.lineage import pinned_snapshots
from snapgroup.locks import try_vm_lock, vm_lock
from snapgroup.merging import Merger, MergeSpec
from snapgroup.models import DiskOverlay, DomainInfo, VmState
from snapgroup.planner import (
    MergePlan,
    apply_merge,
    expected_chain,
    plan_merge,
    snapshot_name,
)
from snapgroup.ports import Hypervisor, ImageTool, ProgressFn
from snapgroup.store.db import Database
from snapgroup.store.repo import OperationRepo, Repo
from snapgroup.store.tables import GroupRow, OperationRow, RefRow, SnapshotRow, VolumeRow
from snapgroup.validate import parse_uuid, validate_description, validate_name

OVERLAY_WORKERS = 8
MAX_CHAIN_DEPTH = 200  # libvirt refuses to open a deeper backing chain
# Journal kinds whose recovery lives in snapgroup.lifecycle (revert, clone, one snapshot).
_LIFECYCLE_KINDS = frozenset({"revert", "clone", "delete-snapshot"})


class DeleteMode(StrEnum):
    PERMISSIVE = "Permissive"
    ENFORCING = "Enforcing"

    @classmethod
    def parse(cls, value: str | DeleteMode) -> DeleteMode:
        for mode in cls:
            if value == mode or str(value).lower() == mode.value.lower():
                return mode
        raise InvalidArgument(f"deleteMode {value!r} is not Permissive or Enforcing")


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _new_uuid() -> str:
    return uuidlib.uuid4().hex


@dataclass
class _Merge:
    """One snapshot being deleted (with its group ref, if any): what to merge, or why not."""

    ref: RefRow | None
    snapshot: SnapshotRow
    volume: VolumeRow | None
    plan: MergePlan | None = None
    blocking: str | None = None  # never merged, in any mode: it could break the chain
    refusable: str | None = None  # Permissive refuses; Enforcing goes ahead


class Engine:
    def __init__(
        self,
        *,
        hypervisor: Hypervisor,
        images: ImageTool,
        db: Database,
        clock: Callable[[], datetime] = _utcnow,
        new_uuid: Callable[[], str] = _new_uuid,
        lock_wait: float = 0.0,
        freeze_timeout: int = FREEZE_TIMEOUT_S,
        host: str | None = None,
    ) -> None:
        """`host`: this host's name in a store shared by several (default
        snapgroup.host.local_host()); the engine only operates on VMs it owns."""
        self.hv = hypervisor
        self.images = images
        self.db = db
        self.clock = clock
        self.new_uuid = new_uuid
        self.lock_wait = lock_wait  # seconds to wait for another operation on the same VM
        self.freeze_timeout = freeze_timeout  # seconds per guest-agent request
        self.host = host or local_host()
        self.journal = Journal(db, clock, new_uuid, host=self.host)

    def check_owner(self, vm_uuid: str, repo: Repo | None = None) -> None:
        """OperationError unless this host owns the VM's files (or no host is recorded):
        in a store shared by several hosts, each operates on its own VMs only."""
        if repo is None:
            with self.db.transaction() as session:
                self.check_owner(vm_uuid, Repo(session))
            return
        others = repo.vm_hosts(vm_uuid) - {self.host}
        if others:
            raise OperationError(
                f"VM {vm_uuid} belongs to host {', '.join(sorted(others))}, not to this "
                f"host ({self.host}): a host only operates on its own VMs"
            )

    # discovery -------------------------------------------------------------------------
    def _discover(self, domain: DomainInfo) -> Discovered:
        with self.db.transaction() as session:
            return register_volumes(
                Repo(session), domain, now=self.clock(), new_uuid=self.new_uuid, host=self.host
            )

    def _domain_of(self, *, vm: str | None, root_volume_uuid: str | None) -> DomainInfo:
        if (vm is None) == (root_volume_uuid is None):
            raise InvalidArgument("give exactly one of a VM (name or UUID) or a root volume UUID")
        if vm is not None:
            return self.hv.lookup(vm)
        volume_uuid = parse_uuid(root_volume_uuid or "", "rootVolumeUuid")
        with self.db.transaction() as session:
            volume = Repo(session).volume(volume_uuid)
        if volume is None:
            raise NotFound(f"volume {volume_uuid} is not known (run `snapgroup volumes` first)")
        if volume.volume_type != "Root":
            raise InvalidArgument(
                f"volume {volume_uuid} is a {volume.volume_type} volume, not Root"
            )
        self.check_owner(volume.vm_uuid)
        return self.hv.lookup(volume.vm_uuid)

    def volumes(self, vm: str) -> list[VolumeView]:
        return self._discover(self.hv.lookup(vm)).views()

    # queries ---------------------------------------------------------------------------
    def get(self, group_uuid: str) -> Group:
        uuid = parse_uuid(group_uuid, "group uuid")
        with self.db.transaction() as session:
            groups = _load_groups(Repo(session), [uuid])
        if not groups:
            raise NotFound(f"snapshot group {uuid} not found")
        return groups[0]

    def list_groups(self, *, vm: str | None = None) -> list[Group]:
        vm_uuid = self.hv.lookup(vm).uuid if vm is not None else None
        with self.db.transaction() as session:
            repo = Repo(session)
            rows = repo.groups(vm_uuid=vm_uuid)
            return _load_groups(repo, [r.uuid for r in rows])

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
            return _load_groups(repo, [uuid])[0]

    # create ----------------------------------------------------------------------------
    def create(
        self,
        *,
        name: str,
        vm: str | None = None,
        root_volume_uuid: str | None = None,
        description: str | None = None,
        resource_uuid: str | None = None,
        skip_unsupported: bool = False,
        consistency: Consistency | str = Consistency.AUTO,
    ) -> Group:
        """`consistency`: application (freeze the guest's filesystems or fail), crash (no
        freeze) or auto (application when the freeze works, else crash, and why):
        snapgroup.consistency."""
        name = validate_name(name)
        description = validate_description(description)
        mode = Consistency.parse(consistency)
        group_uuid = parse_uuid(resource_uuid, "resourceUuid") if resource_uuid else self.new_uuid()
        domain = self._domain_of(vm=vm, root_volume_uuid=root_volume_uuid)
        with vm_lock(domain.uuid, wait=self.lock_wait):
            domain = self.hv.lookup(domain.uuid)  # what it is now, under the lock
            return self._create_locked(
                domain, group_uuid, name, description, skip_unsupported=skip_unsupported, mode=mode
            )

    def _create_locked(
        self,
        domain: DomainInfo,
        group_uuid: str,
        name: str,
        description: str | None,
        *,
        skip_unsupported: bool,
        mode: Consistency = Consistency.AUTO,
    ) -> Group:
        if domain.state is VmState.OTHER:
            raise OperationError(f"VM {domain.name} is neither running, paused nor stopped")
        self._sync(domain.uuid, domain)
        found = self._discover(domain)
        with self.db.transaction() as session:
            if Repo(session).group(group_uuid) is not None:
                raise InvalidArgument(f"resourceUuid {group_uuid} is already used by a group")
        chosen = _choose_disks(found, skip_unsupported=skip_unsupported)
        live = domain.state.is_live
        with self.db.transaction() as session:  # one query for every disk's chain
            lineages = Repo(session).lineages([found.volumes[t] for t in chosen])

        def check(t: str) -> int:
            return self._check_chain(found.volumes[t], live, lineages[found.volumes[t].uuid])

        if live or len(chosen) < 2:  # shared reads: QemuImg reads them in-process (qcow2.py)
            sizes = {t: check(t) for t in chosen}
        else:  # a stopped VM's: a `qemu-img info` process each, in parallel (first error wins)
            with ThreadPoolExecutor(max_workers=min(OVERLAY_WORKERS, len(chosen))) as pool:
                sizes = dict(zip(chosen, pool.map(check, chosen), strict=True))
        overlays = [
            DiskOverlay(
                target=t,
                current=found.volumes[t].install_path,
                overlay=os.path.join(
                    os.path.dirname(found.volumes[t].install_path), f"{self.new_uuid()}.qcow2"
                ),
            )
            for t in chosen
        ]
        clash = [o.overlay for o in overlays if self.images.exists(o.overlay)]
        if clash:  # so recovery may remove every overlay the journal names: all are ours
            raise OperationError(f"overlay path already exists: {', '.join(clash)}")
        plan = {
            "group_uuid": group_uuid,
            "name": name,
            "description": description,
            "live": live,
            "overlays": [asdict(o) for o in overlays],
            "volumes": {t: found.volumes[t].uuid for t in chosen},
            "consistency_mode": mode.value,
        }
        op = self.journal.begin("create", domain.uuid, plan, group_uuid=group_uuid)
        try:
            self._create_overlays(overlays, sizes)
        except SnapgroupError as exc:
            self.journal.close(op, FAILED, detail=exc.details)
            raise
        self.journal.step(op, "create", "overlays")
        # The guest is frozen (when it is) only around the switch: "freezing" is
        # journaled before the agent is asked, so `recover` thaws a guest a killed
        # process left frozen. Nothing is journaled inside the window (it would lengthen
        # it); create:frozen and create:thawing are fault-injection points only.
        window = FreezeWindow(
            self.hv,
            domain,
            mode,
            timeout=self.freeze_timeout,
            on_freezing=lambda: self.journal.step(op, "create", "freezing", freezing=True),
        )
        try:
            with window:
                if window.froze:
                    self.journal.point("create", "frozen")
                try:
                    self._switch(domain.uuid, live, overlays)
                except HypervisorUnavailable:
                    # libvirtd went away (a restart?); when nothing was switched, one more
                    # try on a new connection is safe.
                    if not self._none_switched(domain.uuid, overlays):
                        raise
                    self._switch(domain.uuid, live, overlays)
                if window.froze:
                    self.journal.point("create", "thawing")
        except SnapgroupError as exc:
            if window.refused is not None:  # application mode, no freeze: nothing switched
                self._remove_files([o.overlay for o in overlays])
                self.journal.close(op, FAILED, detail=exc.details)
                raise
            if window.record is not None:
                plan["consistency"] = window.record.to_plan()
            # An error does not prove the switch did not happen (libvirtd may have died
            # after doing it): look before removing overlays a running QEMU may be using.
            group = self._settle_create(op, plan, domain.uuid)
            if group is None:
                raise
            return group
        assert window.record is not None
        plan["consistency"] = window.record.to_plan()
        if window.froze:
            self.journal.step(op, "create", "thawed", consistency=plan["consistency"])
        self.journal.step(op, "create", "switched", consistency=plan["consistency"])
        try:
            return self._record_group(op, plan, domain.uuid)
        except SnapgroupError as exc:
            self._undo_snapshot(domain.uuid, live, overlays)
            self.journal.close(op, ROLLED_BACK, detail=exc.details)
            raise

    def _check_chain(self, volume: VolumeRow, live: bool, lineage: list[SnapshotRow]) -> int:
        """The real chain must be what the metadata says; returns the virtual size."""
        try:
            chain = self.images.chain(volume.install_path, shared=live)
        except ImageToolError as exc:
            raise OperationError(
                f"disk {volume.target} ({volume.install_path}): missing file or broken chain",
                cause=exc,
            ) from exc
        if chain[0].format != "qcow2":
            raise OperationError(f"{volume.install_path} is {chain[0].format}, not qcow2")
        if len(chain) >= MAX_CHAIN_DEPTH:
            raise OperationError(
                f"disk {volume.target} has {len(chain)} layers; libvirt refuses chains deeper "
                f"than {MAX_CHAIN_DEPTH}: delete older groups first"
            )
        expected = expected_chain(volume, lineage)
        actual = [layer.path for layer in chain]
        if actual[: len(expected)] != expected:
            raise OperationError(
                f"volume {volume.uuid}: the real chain {actual} does not match the "
                f"recorded chain {expected}"
            )
        return chain[0].virtual_size

    def _create_overlays(self, overlays: Sequence[DiskOverlay], sizes: dict[str, int]) -> None:
        """In parallel, before any critical window. All or nothing."""

        def make(o: DiskOverlay) -> None:
            self.images.create_overlay(
                o.overlay, backing=o.current, backing_format="qcow2", size=sizes[o.target]
            )

        workers = max(1, min(OVERLAY_WORKERS, len(overlays)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(make, o) for o in overlays]
            errors = [f.exception() for f in futures]
        failed = [e for e in errors if e is not None]
        if failed:
            # Only what we made: a failed create_overlay never leaves a file of its own,
            # and never touches one that was there before.
            made = [o.overlay for o, e in zip(overlays, errors, strict=True) if e is None]
            self._remove_files(made)
            raise failed[0]

    def _remove_files(self, paths: Sequence[str]) -> None:
        for path in paths:
            try:
                self.images.remove(path)
            except SnapgroupError:
                continue  # best effort on the error path; the original error matters more

    def _undo_snapshot(self, vm_uuid: str, live: bool, overlays: Sequence[DiskOverlay]) -> None:
        """Put every disk back on its old top (keeping what was written since), then drop
        the overlays."""
        if live:
            for o in overlays:
                self.hv.block_commit(vm_uuid, o.target, top=None, base=o.current)
        else:
            self.hv.set_disk_sources(vm_uuid, {o.target: o.current for o in overlays})
        self._remove_files([o.overlay for o in overlays])

    def _record_group(self, op: str, plan: dict[str, Any], vm_uuid: str) -> Group:
        """The group, its snapshots and refs, the volumes' new tops and the journal's
        'done': one transaction."""
        now = self.clock()
        group_uuid, name = plan["group_uuid"], plan["name"]
        consistency = (
            ConsistencyRecord.from_plan(plan["consistency"])
            if "consistency" in plan
            else interrupted_record(froze=False)
        )
        with self.db.transaction() as session:
            repo = Repo(session)
            repo.add(
                GroupRow(
                    uuid=group_uuid,
                    name=name,
                    description=plan["description"],
                    vm_uuid=vm_uuid,
                    create_date=now,
                    last_op_date=now,
                    consistency_type=consistency.type.value,
                    frozen_filesystems=json.dumps(list(consistency.frozen_filesystems)),
                    freeze_millis=consistency.freeze_millis,
                    consistency_note=consistency.note,
                    host=self.host,
                )
            )
            # One query for the volumes and one flush per table, not one of each per disk.
            volumes = {v.uuid: v for v in repo.volumes_of_vm(vm_uuid)}
            snapshots: list[SnapshotRow | VolumeRow] = []
            refs: list[RefRow] = []
            for o in plan["overlays"]:
                volume = volumes.get(plan["volumes"][o["target"]]) or repo.volume(
                    plan["volumes"][o["target"]]
                )
                assert volume is not None
                snap = SnapshotRow(
                    uuid=self.new_uuid(),
                    volume_uuid=volume.uuid,
                    name=snapshot_name(name, volume.name),
                    install_path=o["current"],
                    parent_uuid=volume.parent_snapshot_uuid,
                    create_date=now,
                    last_op_date=now,
                )
                volume.install_path = o["overlay"]
                volume.parent_snapshot_uuid = snap.uuid
                volume.last_op_date = now
                snapshots += (snap, volume)
                refs.append(
                    RefRow(
                        volume_snapshot_uuid=snap.uuid,
                        group_uuid=group_uuid,
                        device_id=volume.device_id,
                        volume_uuid=volume.uuid,
                        volume_name=volume.name,
                        volume_type=volume.volume_type,
                        volume_last_attach_date=volume.last_attach_date,
                        create_date=now,
                        last_op_date=now,
                    )
                )
            repo.add(*snapshots)  # before the refs that name them
            repo.add(*refs)
            self.journal.close(op, DONE, session=session)
            return _load_groups(repo, [group_uuid])[0]

    # delete ----------------------------------------------------------------------------
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
                _Merge(ref, snap, repo.volume(snap.volume_uuid))
                for ref, snap in repo.refs_with_snapshots([uuid])
            ]
            chains = repo.lineages([m.volume for m in merges if m.volume is not None])
            pinned = pinned_snapshots(repo, chains.values())
        domain = self._domain_for_delete(vm_uuid, mode)
        for m in merges:
            self._check_merge(m, domain, chains.get(m.snapshot.volume_uuid, []), pinned)
        if mode is DeleteMode.PERMISSIVE:
            problems = [p for m in merges for p in (m.blocking, m.refusable) if p]
            if problems:
                raise OperationError("cannot delete group: " + "; ".join(problems))
        live = domain is not None and domain.state.is_live
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
        results = []
        for m in merges:
            spec = specs.get(m.snapshot.uuid)
            if m.snapshot.deleted:
                results.append(DeleteResult(m.snapshot.uuid, m.snapshot.volume_uuid, True))
            elif spec is None:
                error = DeleteFailed(m.blocking or "not merged")
                results.append(DeleteResult(m.snapshot.uuid, m.snapshot.volume_uuid, False, error))
            else:
                results.append(self._run_merge(op, vm_uuid, live, spec, progress))
        succeeded = [r.snapshot_uuid for r in results if r.success]
        self._record_delete(op, uuid, succeeded, len(merges), mode)
        return DeleteReport(uuid, tuple(results))

    def _sync(self, vm_uuid: str, domain: DomainInfo | None) -> None:
        """Record what changed behind our back first (detached or removed volumes, a VM
        that is gone): snapgroup.sync. The caller holds the VM's lock."""
        from snapgroup.sync import sync_locked  # it imports this module

        sync_locked(self, vm_uuid, domain)

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
        m: _Merge,
        domain: DomainInfo | None,
        chain: list[SnapshotRow],
        pinned: dict[str, str] | None = None,
    ) -> None:
        """Fill in m.plan, or the reason it must not (blocking) or should not (refusable)
        be merged. `pinned`: snapshots a clone reads (lineage.pinned_snapshots)."""
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
            plan = plan_merge(volume, chain, m.snapshot, pinned=pinned)
            self._verify_real_chain(volume, chain, domain.state.is_live)
        except SnapgroupError as exc:
            m.blocking = f"snapshot {sid}: {exc.details}"
            return
        m.plan = plan
        live = domain.state.is_live
        needed = plan.needed_bytes(lambda p: self.images.chain(p, shared=live)[0].actual_size)
        free = self.images.free_bytes(os.path.dirname(plan.base))
        if free < needed:
            m.refusable = (
                f"snapshot {sid}: merging needs {needed} bytes beside {plan.base}, {free} free"
            )

    def _verify_real_chain(self, volume: VolumeRow, chain: list[SnapshotRow], live: bool) -> None:
        expected = expected_chain(volume, chain)
        for path in expected:
            if not self.images.exists(path):
                raise OperationError(f"file {path} is missing")
        actual = [layer.path for layer in self.images.chain(volume.install_path, shared=live)]
        if actual[: len(expected)] != expected:
            raise OperationError(f"real chain {actual} does not match the metadata {expected}")

    def _run_merge(
        self, op: str, vm_uuid: str, live: bool, spec: MergeSpec, progress: ProgressFn | None
    ) -> DeleteResult:
        try:
            Merger(self.hv, self.images, self.journal).finish(op, vm_uuid, live, spec, progress)
        except SnapgroupError as exc:
            error = DeleteFailed(f"snapshot {spec.snapshot_uuid}: merge failed", cause=exc)
            return DeleteResult(spec.snapshot_uuid, spec.volume_uuid, False, error)
        return DeleteResult(spec.snapshot_uuid, spec.volume_uuid, True)

    def _record_delete(
        self, op: str, uuid: str, succeeded: Sequence[str], total: int, mode: DeleteMode
    ) -> None:
        """One transaction: chain moves of the merged snapshots, their rows, the group,
        and the journal's 'done'."""
        now = self.clock()
        with self.db.transaction() as session:
            repo = Repo(session)
            for snapshot_uuid in succeeded:
                snapshot = repo.snapshot(snapshot_uuid)
                if snapshot is None or snapshot.deleted:
                    continue
                volume = repo.volume(snapshot.volume_uuid)
                assert volume is not None
                plan = plan_merge(volume, repo.lineage(volume), snapshot)
                apply_merge(volume, plan)
                volume.last_op_date = now
                repo.add(volume)
                if plan.child_snapshot is not None:
                    plan.child_snapshot.last_op_date = now
                    repo.add(plan.child_snapshot)
            repo.delete_snapshots(succeeded)
            group = repo.group(uuid)
            if group is not None:
                if mode is DeleteMode.ENFORCING or len(succeeded) == total:
                    repo.delete_group(uuid)
                else:
                    group.last_op_date = now
                    repo.add(group)
            self.journal.close(op, DONE, session=session)

    # recovery --------------------------------------------------------------------------
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

    def _switch(self, vm_uuid: str, live: bool, overlays: Sequence[DiskOverlay]) -> None:
        """Every disk onto its overlay in one step: one atomic libvirt snapshot (running)
        or one defineXML (stopped)."""
        if live:
            self.hv.snapshot_disks(vm_uuid, overlays)
        else:
            self.hv.set_disk_sources(vm_uuid, {o.target: o.overlay for o in overlays})

    def _none_switched(self, vm_uuid: str, overlays: Sequence[DiskOverlay]) -> bool:
        try:
            paths = {d.target: d.path for d in self.hv.lookup(vm_uuid).disks}
        except SnapgroupError:
            return False
        return all(paths.get(o.target) == o.current for o in overlays)

    def _settle_create(self, op: str, plan: dict[str, Any], vm_uuid: str) -> Group | None:
        """After a failed switch: the group when the switch happened after all, None when
        it was rolled back. When even that cannot be seen, the journal stays open and
        `recover` decides later."""
        try:
            domain = self.hv.lookup(vm_uuid)
        except SnapgroupError:
            return None
        self._recover_create(op, plan, domain)
        with self.db.transaction() as session:
            exists = Repo(session).group(plan["group_uuid"]) is not None
        return self.get(plan["group_uuid"]) if exists else None

    def _recover_create(self, op: str, plan: dict[str, Any], domain: DomainInfo) -> None:
        thaw_note = ""
        if plan.get("freezing") and "consistency" not in plan:
            # Killed inside the freeze window: the guest may still be frozen, and every
            # write in it blocked. Thawing is harmless when it is not.
            thawed, error = (
                thaw_with_retries(self.hv, domain.uuid, timeout=self.freeze_timeout)
                if domain.state.is_live
                else (0, None)
            )
            record = interrupted_record(froze=True, thawed=thawed, thaw_error=error)
            plan = {**plan, "consistency": record.to_plan()}
            thaw_note = f"; {thaw_report(thawed, error)}"
        overlays = [DiskOverlay(**o) for o in plan["overlays"]]
        paths = {d.target: d.path for d in domain.disks}
        switched = [o for o in overlays if paths.get(o.target) == o.overlay]
        if overlays and len(switched) == len(overlays):
            self._record_group(op, plan, domain.uuid)  # the snapshot was taken: keep it
            return
        if switched:  # never seen (the switch is atomic) but never left half-done either
            self._undo_snapshot(domain.uuid, domain.state.is_live, switched)
        self._remove_files([o.overlay for o in overlays])
        self.journal.close(
            op, ROLLED_BACK, detail=f"recover: interrupted before the switch{thaw_note}"
        )

    def _recover_delete(self, op: str, plan: dict[str, Any], domain: DomainInfo) -> None:
        live = domain.state.is_live
        succeeded = list(plan["noop"])
        for spec in (MergeSpec(**m) for m in plan["merges"]):
            if self._run_merge(op, domain.uuid, live, spec, None).success:
                succeeded.append(spec.snapshot_uuid)
        self._record_delete(
            op, plan["group_uuid"], succeeded, plan["total"], DeleteMode.parse(plan["mode"])
        )

    def operations(self, *, limit: int = 100) -> list[OperationRow]:
        with self.db.transaction() as session:
            return OperationRepo(session).recent(limit=limit)


def _choose_disks(found: Discovered, *, skip_unsupported: bool) -> list[str]:
    """Targets to snapshot, in deviceId order."""
    planned = [p for p in found.planned if p.device_id is not None]
    if not planned:
        raise OperationError(f"VM {found.domain.name} has no disks")
    root = planned[0]
    if not root.eligible:
        raise OperationError(
            f"root disk {root.disk.target} cannot be snapshotted: {root.skip_reason}"
        )
    blocking = [p for p in planned if p.blocks_create]
    if blocking and not skip_unsupported:
        listed = "; ".join(f"{p.disk.target}: {p.skip_reason}" for p in blocking)
        raise OperationError(
            f"VM {found.domain.name} has writable disks that cannot be snapshotted ({listed}); "
            "a group without them would not be the VM's point in time (skip_unsupported "
            "to take it anyway)"
        )
    return [p.disk.target for p in planned if p.eligible]


def _load_groups(repo: Repo, uuids: Sequence[str]) -> list[Group]:
    found = repo.groups_by_uuid(uuids)  # one query, not one per group
    rows = {u: found.get(u) for u in uuids}
    refs: dict[str, list[GroupRef]] = {u: [] for u in uuids}
    for r in repo.ref_views(list(uuids)):  # plain rows: no ORM object per ref
        refs[r.group_uuid].append(
            GroupRef(
                volume_snapshot_uuid=r.volume_snapshot_uuid,
                group_uuid=r.group_uuid,
                device_id=r.device_id,
                snapshot_deleted=r.snapshot_deleted,
                volume_uuid=r.volume_uuid,
                volume_name=r.volume_name,
                volume_type=r.volume_type,
                install_path=r.install_path,
                snapshot_name=r.snapshot_name,
                volume_last_attach_date=r.volume_last_attach_date,
                create_date=r.create_date,
                last_op_date=max(r.last_op_date, r.snapshot_last_op_date),
            )
        )
    return [
        Group(
            uuid=row.uuid,
            name=row.name,
            description=row.description,
            vm_uuid=row.vm_uuid,
            create_date=row.create_date,
            last_op_date=row.last_op_date,
            refs=tuple(refs[u]),
            consistency_type=row.consistency_type,
            frozen_filesystems=tuple(json.loads(row.frozen_filesystems or "[]")),
            freeze_millis=row.freeze_millis,
            consistency_note=row.consistency_note,
        )
        for u, row in rows.items()
        if row is not None
    ]
