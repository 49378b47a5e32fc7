"""Export a group to a backup repository (`ContextSource`: the engine as an
ExportSource), and list and verify a repository's backups. Export locks, journals and
recovers; ops/exporting.py does the copying, ops/backing_up.py the checks. Pruning is
ops/prune_backups.py's, restoring ops/restore.py's."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC
from typing import Any

from snapgroup.domain.backup_manifest import (
    BackupManifest,
    DamagedBackup,
)
from snapgroup.domain.errors import (
    NotFound,
    OperationError,
    SnapgroupError,
)
from snapgroup.domain.inventory import zstack_date
from snapgroup.domain.models import DomainInfo
from snapgroup.domain.validate import parse_uuid
from snapgroup.ops import backup_listing
from snapgroup.ops.backing_up import (
    EXPORT,
    ExportResult,
    VerifyReport,
    open_store,
    verify_backups,
)
from snapgroup.ops.context import OpContext
from snapgroup.ops.exporting import SourceDisk, SourceGroup, SourceMemory, export_group
from snapgroup.ops.group_views import check_intact, load_groups
from snapgroup.ops.journal import DONE, ROLLED_BACK
from snapgroup.ops.recovery import recovers
from snapgroup.ops.resolve import lookup_or_none
from snapgroup.ports import ImageTool, ProgressFn
from snapgroup.store.repo import Repo
from snapgroup.store.tables import GroupRow, SnapshotRow


class ContextSource:
    """ExportSource over an OpContext: groups, refs and snapshots from the store, the
    domain's persistent XML from the Hypervisor port, virtual sizes from the images."""

    def __init__(self, ctx: OpContext) -> None:
        self.ctx = ctx

    @property
    def images(self) -> ImageTool:
        return self.ctx.images

    def group(self, group_uuid: str) -> SourceGroup:
        with self.ctx.db.transaction() as session:
            repo = Repo(session)
            row = repo.group(group_uuid)
            if row is None:
                raise NotFound(f"snapshot group {group_uuid} not found")
            (view,) = load_groups(repo, [group_uuid])
            refs = repo.refs_with_snapshots([group_uuid])
            volumes = {v.uuid: v for v in repo.volumes_of_vm(row.vm_uuid)}
            ancestors = _ancestors(repo, row.vm_uuid, group_uuid)
        disks = []
        for ref, snap in sorted(refs, key=lambda rs: rs[0].device_id):
            check_intact(group_uuid, ref.volume_uuid, snap, to_be="exported")
            volume = volumes.get(ref.volume_uuid)
            top = self.ctx.images.chain(snap.install_path, shared=True)[0]
            disks.append(
                SourceDisk(
                    volume_uuid=ref.volume_uuid,
                    device_id=ref.device_id,
                    target=volume.target if volume is not None else f"disk{ref.device_id}",
                    snapshot_file=snap.install_path,
                    virtual_size=top.virtual_size,
                )
            )
        domain = lookup_or_none(self.ctx, row.vm_uuid)
        xml = self.ctx.hv.definition_xml(row.vm_uuid) if domain is not None else ""
        if not xml:
            raise OperationError(
                f"VM {row.vm_uuid} is no longer defined: a backup needs its domain XML"
            )
        return SourceGroup(
            vm_uuid=row.vm_uuid,
            vm_name=domain.name if domain is not None else "",
            group_uuid=group_uuid,
            group_name=row.name,
            create_date=zstack_date(row.create_date),
            inventory=view.to_inventory(),
            domain_xml=xml,
            disks=tuple(disks),
            ancestors=ancestors,
            memory=_memory(row),
        )

    def snapshot_files(self, group_uuid: str) -> Mapping[str, str]:
        with self.ctx.db.transaction() as session:
            refs = Repo(session).refs_with_snapshots([group_uuid])
        return {
            ref.volume_uuid: snap.install_path
            for ref, snap in refs
            if not snap.deleted and not snap.changed
        }

    def now(self) -> str:
        return self.ctx.clock().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def new_uuid(self) -> str:
        return self.ctx.new_uuid()


def _memory(row: GroupRow) -> SourceMemory | None:
    """A memory group's saved state, as recorded."""
    if row.memory_file is None or row.memory_size is None or row.memory_sha256 is None:
        return None
    return SourceMemory(row.memory_file, row.memory_size, row.memory_sha256, row.memory_mode or "")


def _ancestors(repo: Repo, vm_uuid: str, group_uuid: str) -> tuple[str, ...]:
    """Groups below `group_uuid` in the VM's tree, nearest first: those owning a
    snapshot in its volumes' chains (followed by parent links, as ops/tree.py does)."""
    volumes = repo.volumes_of_vm(vm_uuid)
    snapshots: dict[str, SnapshotRow] = {}
    for lineage in repo.lineages(volumes).values():
        snapshots.update((s.uuid, s) for s in lineage)
    groups = repo.groups(vm_uuid=vm_uuid)
    refs = repo.refs_with_snapshots([g.uuid for g in groups])
    group_of = {snap.uuid: ref.group_uuid for ref, snap in refs if not snap.deleted}
    out: list[str] = []
    for ref, snap in refs:
        if ref.group_uuid != group_uuid:
            continue
        cur: str | None = snap.parent_uuid
        seen: set[str] = set()
        while cur is not None and cur not in seen:
            seen.add(cur)
            found = group_of.get(cur)
            if found is not None and found != group_uuid and found not in out:
                out.append(found)
            row = snapshots.get(cur)
            cur = row.parent_uuid if row is not None else None
    return tuple(out)


def export(
    ctx: OpContext,
    group_uuid: str,
    *,
    to: str,
    full: bool = False,
    compress: bool = False,
    progress: ProgressFn | None = None,
) -> ExportResult:
    """Export the group to the repository at `to`: an increment over the newest export
    of an ancestor group still there and intact, else full (the manifest says why);
    `compress`: its files' clusters zstd-compressed.
    Journaled: a killed export is never listed; recover (or the next export) removes it."""
    uuid = parse_uuid(group_uuid, "group uuid")
    group = ctx.owned_group(uuid)
    store = open_store(ctx, to, existing=False)
    # The VM's lock: no delete may merge away the files being read.
    with ctx.locks.vm(group.vm_uuid, wait=ctx.lock_wait):
        backup_id = ctx.new_uuid()
        plan = {"repo": store.root, "vm_uuid": group.vm_uuid, "backup_id": backup_id}
        op = ctx.journal.begin(EXPORT, group.vm_uuid, plan, group_uuid=uuid)
        try:
            result = export_group(
                ContextSource(ctx),
                store,
                uuid,
                full=full,
                compress=compress,
                progress=progress,
                backup_id=backup_id,
                step=lambda name: ctx.journal.step(op, EXPORT, name),
            )
        except SnapgroupError as exc:
            ctx.journal.close(op, ROLLED_BACK, detail=f"export failed: {exc.details}")
            raise
        ctx.journal.close(op, DONE, detail=f"backup {backup_id} in {store.root}")
    return result


@recovers(EXPORT, without_vm=True)
def recover_export(ctx: OpContext, op: str, plan: dict[str, Any], _domain: DomainInfo) -> None:
    """Published: done. Else the partial is removed: the next export redoes it."""
    store = open_store(ctx, plan["repo"], existing=False)
    try:
        store.get(plan["backup_id"], vm_uuid=plan["vm_uuid"])
    except NotFound:
        store.discard(store.partial(plan["vm_uuid"], plan["backup_id"]))
        ctx.journal.close(op, ROLLED_BACK, detail="export interrupted: its partial removed")
        return
    ctx.journal.close(op, DONE, detail=f"backup {plan['backup_id']} was published")


def scan_backups(
    ctx: OpContext, *, at: str, vm: str | None = None
) -> tuple[list[BackupManifest], list[DamagedBackup]]:
    """backup_listing.scan on the engine's repositories."""
    return backup_listing.scan(ctx.backup_store, at, vm)


def verify_backup(ctx: OpContext, *, at: str, backup_id: str | None = None) -> VerifyReport:
    store = open_store(ctx, at)
    return verify_backups(
        ctx.images, store, parse_uuid(backup_id, "backup id") if backup_id else None
    )
