"""Metadata against what libvirt and the files say now: the machinery of `snapgroup
sync` (ops/sync.py), run implicitly at the start of every operation on a VM.

What it records (metadata only; it never removes or rewrites a file):
* a disk attached since the last look becomes a volume; one that left is detached (its
  groups become unavailable, `check` says why) and is attached again if it comes back;
* a detached volume whose top file is gone was removed: its snapshots are marked
  deleted (refs say snapshotDeleted=true) and it no longer pins what it sat on;
* a VM that is no longer defined has every volume detached: its groups are unavailable
  and every file is kept. Once it has no group left (and no other VM's chain reads its
  snapshots, nor it another's), `snapgroup sync` forgets it: its volume and snapshot
  rows go (forget_gone), its files stay.
What it only reports: a disk whose top file is not the recorded one (an overlay made
outside snapgroup, or another file), and chains that do not match the metadata.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from snapgroup.domain.errors import SnapgroupError
from snapgroup.domain.models import DomainInfo
from snapgroup.domain.planner import expected_chain
from snapgroup.ops.context import OpContext
from snapgroup.ops.discovery import Discovered, discover, register_volumes
from snapgroup.ops.recovery import recover_one
from snapgroup.ops.resolve import lookup_or_none
from snapgroup.store.operations import OperationRepo
from snapgroup.store.repo import Repo
from snapgroup.store.snapshots import ChainLink
from snapgroup.store.tables import OperationRow, VolumeRow


@dataclass(frozen=True)
class Change:
    vm_uuid: str
    kind: str  # vm-gone, vm-forgotten, volume-attached, volume-detached, volume-removed,
    # top-changed, chain-mismatch
    detail: str
    volume_uuid: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "vmInstanceUuid": self.vm_uuid,
            "volumeUuid": self.volume_uuid,
            "kind": self.kind,
            "detail": self.detail,
        }


def sync_locked(
    ctx: OpContext, vm_uuid: str, domain: DomainInfo | None, *, deep: bool = False
) -> list[Change]:
    """The caller holds the VM's lock (an operation half-way through would look like a
    disk swapped under us). `domain` None: the VM is not defined any more."""
    if _finish_interrupted(ctx, vm_uuid):
        domain = lookup_or_none(ctx, vm_uuid)
    return _sync_finished(ctx, vm_uuid, domain, deep=deep)


@contextmanager
def synced(ctx: OpContext, domain: DomainInfo) -> Iterator[tuple[Repo, Discovered]]:
    """For an operation on `domain` (the caller holds its lock): sync_locked, then the
    discovery of its disks, with one read of the VM's volumes; the sync is committed,
    then the caller reads on in the same session (an error there undoes no sync). The
    journal is looked at in that session too: one transaction, when nothing is left."""
    now = ctx.clock()
    with ctx.db.transaction() as session:
        rows = _interrupted(ctx, OperationRepo(session), domain.uuid)
        if not rows:
            repo = Repo(session)
            _changes, discovered, _attached = _record(ctx, repo, domain.uuid, domain, now)
            assert discovered is not None
            session.commit()  # what sync recorded stays, whatever the caller does next
            yield repo, discovered
            return
    # Rare: finished first; the VM may have changed since `domain`: the two steps, as ever.
    for row in rows:
        recover_one(ctx, row)
    _sync_finished(ctx, domain.uuid, lookup_or_none(ctx, domain.uuid), deep=False)
    found = discover(ctx, domain)
    with ctx.db.transaction() as session:
        yield Repo(session), found


def _sync_finished(
    ctx: OpContext, vm_uuid: str, domain: DomainInfo | None, *, deep: bool
) -> list[Change]:
    """sync_locked once no interrupted operation is left on the VM."""
    now = ctx.clock()
    with ctx.db.transaction() as session:
        repo = Repo(session)
        changes, _found, attached = _record(ctx, repo, vm_uuid, domain, now)
        # Only the deep check reads them: 1,600 rows at 16 disks x 100 snapshots.
        chains = repo.chains(attached) if deep and domain is not None else {}
    if deep and domain is not None:
        live = domain.state.is_live
        changes += [c for v in attached if (c := _chain_change(ctx, v, chains[v.uuid], live))]
    return changes


def _record(
    ctx: OpContext, repo: Repo, vm_uuid: str, domain: DomainInfo | None, now: datetime
) -> tuple[list[Change], Discovered | None, list[VolumeRow]]:
    """What changed, recorded: the changes, the domain's disks discovered (None when it
    is gone) and the volumes attached now. The VM's volumes are read once."""
    known = repo.volumes_of_vm(vm_uuid)
    # Another host's VM is not in this host's libvirt: it would look gone.
    ctx.check_owner(vm_uuid, repo, volumes=known, domain=domain, looked_up=True)
    before = {v.uuid: (v.attached, v.target, v.install_path) for v in known}
    if domain is None:
        return _vm_gone(repo, known, vm_uuid, now) + _removed(ctx, repo, known, now), None, []
    found = register_volumes(
        repo, domain, now=now, new_uuid=ctx.new_uuid, host=ctx.host, known=known
    )
    new = [v for v in found.volumes.values() if v.uuid not in before]
    # Every volume as recorded now, by deviceId as volumes_of_vm lists them.
    volumes = sorted([*known, *new], key=lambda v: v.device_id)
    changes = _attachments(ctx, vm_uuid, before, volumes, list(found.volumes.values()))
    changes += _removed(ctx, repo, volumes, now)
    return changes, found, [v for v in volumes if v.attached]


def _finish_interrupted(ctx: OpContext, vm_uuid: str) -> bool:
    """Operations on the VM whose process died half-way are finished first: synced over,
    disks switched to overlays not yet recorded would look like new volumes. Holding the
    lock, an operation of another process is a dead one; this process's own are in
    flight (a revert takes its safety group inside its lock) and left alone."""
    with ctx.db.transaction() as session:
        rows = _interrupted(ctx, OperationRepo(session), vm_uuid)
    for row in rows:
        recover_one(ctx, row)
    return bool(rows)


def _interrupted(ctx: OpContext, journal: OperationRepo, vm_uuid: str) -> list[OperationRow]:
    """The VM's unfinished operations of this host that are no longer in flight here."""
    return [
        row
        for row in journal.unfinished(host=ctx.journal.host)
        if row.vm_uuid == vm_uuid and row.pid != os.getpid()
    ]


def _vm_gone(repo: Repo, volumes: list[VolumeRow], vm_uuid: str, now: Any) -> list[Change]:
    """`volumes`: every volume of the VM, by deviceId."""
    changes = []
    for volume in [v for v in volumes if v.attached]:
        volume.attached = False
        volume.last_op_date = now
        repo.add(volume)
        changes.append(
            Change(
                vm_uuid,
                "volume-detached",
                f"{volume.target}: the VM is no longer defined",
                volume.uuid,
            )
        )
    if changes:
        changes.insert(
            0,
            Change(
                vm_uuid,
                "vm-gone",
                "the VM is no longer defined; its groups are unavailable and its files are kept",
            ),
        )
    return changes


def forget_gone(ctx: OpContext, vm_uuid: str) -> Change | None:
    """A VM that is no longer defined (the caller holds its lock and has synced it) and
    that nothing keeps: its rows are dropped, its files left as they are. None: kept."""
    with ctx.db.transaction() as session:
        repo = Repo(session)
        volumes = repo.volumes_of_vm(vm_uuid)
        if not volumes or kept_by(ctx, repo, vm_uuid, volumes) or read_by(repo, vm_uuid, volumes):
            return None
        dropped = repo.forget_volumes([v.uuid for v in volumes])
    return Change(
        vm_uuid,
        "vm-forgotten",
        f"the VM is no longer defined and has no groups: its {len(volumes)} volume(s) and "
        f"{dropped} snapshot record(s) are forgotten, its files kept",
    )


def kept_by(ctx: OpContext, repo: Repo, vm_uuid: str, volumes: list[VolumeRow]) -> str | None:
    """Why the records of a VM that is gone must stay (None: nothing keeps them): its
    groups, or its disks still reading another VM's snapshots (a clone whose disks
    are still there: they pin that VM's snapshots). See also read_by."""
    groups = repo.groups(vm_uuid=vm_uuid)
    if groups:
        return f"{len(groups)} group(s)"
    own = {v.uuid for v in volumes}
    there = [v for v in volumes if ctx.images.exists(v.install_path)]  # sync drops the rest
    for lineage in repo.lineages(there).values():
        if any(s.volume_uuid not in own for s in lineage):
            return "its disks sit on another VM's snapshots: remove them and `sync`"
    return None


def read_by(repo: Repo, vm_uuid: str, volumes: list[VolumeRow]) -> str | None:
    """Another VM's disk that reads the snapshots of this one (a clone of it), which
    keeps its records as long as that disk does; None: none."""
    for _snapshot, volume in repo.foreign_dependents(of_volumes=[v.uuid for v in volumes]):
        if volume.vm_uuid != vm_uuid:
            return f"VM {volume.vm_name}'s disk {volume.target} reads its snapshots"
    return None


def _attachments(
    ctx: OpContext,
    vm_uuid: str,
    before: dict[str, tuple[bool, str, str]],
    volumes: list[VolumeRow],
    now_attached: list[VolumeRow],
) -> list[Change]:
    """`volumes`: every volume of the VM, after register_volumes."""
    changes = []
    attached_ids = {v.uuid for v in now_attached}
    for volume in volumes:
        was_attached, target, top = before.get(volume.uuid, (False, volume.target, ""))
        if was_attached and volume.uuid not in attached_ids:
            successor = next((v for v in now_attached if v.target == target), None)
            if successor is not None and successor.uuid not in before:
                changes.append(_top_changed(ctx, vm_uuid, volume, successor))
            else:
                changes.append(
                    Change(vm_uuid, "volume-detached", f"{target} ({top}) left the VM", volume.uuid)
                )
    for volume in now_attached:
        if volume.uuid not in before:
            changes.append(
                Change(
                    vm_uuid,
                    "volume-attached",
                    f"{volume.target} ({volume.install_path}) is a new volume",
                    volume.uuid,
                )
            )
        elif not before[volume.uuid][0]:
            changes.append(
                Change(vm_uuid, "volume-attached", f"{volume.target} is back", volume.uuid)
            )
    return changes


def _top_changed(ctx: OpContext, vm_uuid: str, old: VolumeRow, new: VolumeRow) -> Change:
    try:
        below = [layer.path for layer in ctx.images.chain(new.install_path, shared=True)]
    except SnapgroupError:
        below = []
    how = (
        "an overlay made outside snapgroup sits on the recorded top"
        if old.install_path in below[1:]
        else "another file"
    )
    return Change(
        vm_uuid,
        "top-changed",
        f"disk {new.target} is on {new.install_path}, not the recorded top "
        f"{old.install_path} ({how}): recorded as a new volume {new.uuid}; the old "
        "volume's groups are unavailable",
        old.uuid,
    )


def _removed(ctx: OpContext, repo: Repo, volumes: list[VolumeRow], now: Any) -> list[Change]:
    """`volumes`: every volume of the VM (detached ones are looked at)."""
    changes = []
    for volume in volumes:
        if volume.attached or ctx.images.exists(volume.install_path):
            continue
        snapshots = repo.snapshots_of_volume(volume.uuid)
        if not snapshots and volume.parent_snapshot_uuid is None:
            continue  # already recorded as removed
        for snapshot in snapshots:
            snapshot.deleted = True
            snapshot.last_op_date = now
        volume.parent_snapshot_uuid = None  # its chain is gone: it pins nothing any more
        volume.last_op_date = now
        repo.add(volume, *snapshots)  # one flush, not one per snapshot
        changes.append(
            Change(
                volume.vm_uuid,
                "volume-removed",
                f"{volume.target}: its top file {volume.install_path} is gone; "
                f"{len(snapshots)} snapshot(s) marked deleted, their files kept",
                volume.uuid,
            )
        )
    return changes


def _chain_change(
    ctx: OpContext, volume: VolumeRow, recorded: list[ChainLink], live: bool
) -> Change | None:
    try:
        expected = expected_chain(volume, recorded)
        actual = [layer.path for layer in ctx.images.chain(volume.install_path, shared=live)]
    except SnapgroupError as exc:
        return Change(volume.vm_uuid, "chain-mismatch", exc.details, volume.uuid)
    if actual[: len(expected)] == expected:
        return None
    return Change(
        volume.vm_uuid,
        "chain-mismatch",
        f"{volume.target}: real chain {actual}, recorded {expected}",
        volume.uuid,
    )
