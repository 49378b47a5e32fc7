"""Metadata against reality: the domain XML, `qemu-img info --backing-chain`, the files.

`repair` fixes only what is safe: it finishes interrupted operations (recover), marks
volumes that left the domain as detached, removes overlay files snapgroup made that no
chain and no record uses, frees leaked qcow2 clusters in files no running VM holds
(ops/leaks.py) and forgets a VM that is gone with no groups left (as `sync` does). It
never changes what a file holds for a VM.

Leaked clusters are a warning (severity "warning"): space lost, no data at risk.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from typing import Any

from snapgroup.domain.errors import NotFound, SnapgroupError
from snapgroup.ops import leaks
from snapgroup.ops.context import OpContext
from snapgroup.ops.memory_state import memory_findings
from snapgroup.ops.recovery import recover_pending
from snapgroup.ops.syncing import forget_gone, kept_by, read_by, sync_locked
from snapgroup.store.operations import OperationRepo
from snapgroup.store.repo import Repo
from snapgroup.store.tables import SnapshotRow, VolumeRow

_OURS = re.compile(r"^[0-9a-f]{32}\.qcow2$")  # overlays are named by UUID


@dataclass(frozen=True)
class Difference:
    vm_uuid: str
    kind: str
    detail: str
    volume_uuid: str | None = None
    repaired: bool = False
    groups: tuple[str, ...] = ()  # the groups a revert to which needs what is wrong
    severity: str = "error"  # "warning": worth fixing, nothing is wrong with the data

    def to_dict(self) -> dict[str, Any]:
        return {
            "vmInstanceUuid": self.vm_uuid,
            "volumeUuid": self.volume_uuid,
            "kind": self.kind,
            "severity": self.severity,
            "detail": self.detail,
            "repaired": self.repaired,
            "groups": list(self.groups),
        }


@dataclass(frozen=True)
class _File:
    """A file the metadata names: a volume's top or a live snapshot's, on any branch."""

    path: str
    volume: VolumeRow
    what: str  # "snapshot <uuid>" or "the current top"
    parent: str | None  # the recorded backing file; None: not recorded (the original base)
    below: tuple[str, ...]  # the recorded chain under it, parent first
    groups: tuple[str, ...]  # groups whose ref reads this file (its own or one above it)


def verify(ctx: OpContext, *, vm: str | None = None, repair: bool = False) -> list[Difference]:
    if repair:
        recover_pending(ctx)
    with ctx.db.transaction() as session:
        repo = Repo(session)
        if vm is not None:
            vm_uuids = [ctx.hv.lookup(vm).uuid]
        else:
            host = ctx.host  # another host's VMs are not in this host's libvirt
            groups = repo.groups(host=host)
            vm_uuids = sorted({g.vm_uuid for g in groups} | repo.vm_uuids(host=host))
        pending = {op.vm_uuid for op in OperationRepo(session).unfinished(host=ctx.journal.host)}
    diffs: list[Difference] = []
    in_use = leaks.InUse(ctx)  # read once, if a leak is found
    checked: set[str] = set()  # files qemu-img checked: a clone's chain shares some
    for vm_uuid in vm_uuids:
        if vm_uuid in pending:
            diffs.append(
                Difference(
                    vm_uuid,
                    "operation-unfinished",
                    "an interrupted operation awaits `snapgroup recover`",
                )
            )
        busy = vm_uuid in pending
        diffs.extend(_verify_vm(ctx, vm_uuid, in_use, checked, busy=busy, repair=repair))
    return diffs


def _verify_vm(
    ctx: OpContext,
    vm_uuid: str,
    in_use: leaks.InUse,
    checked: set[str],
    *,
    busy: bool,
    repair: bool,
) -> list[Difference]:
    try:
        domain = ctx.hv.lookup(vm_uuid)
    except NotFound:
        return _vm_missing(ctx, vm_uuid, repair=repair and not busy)
    live = domain.state.is_live
    disks = {d.target: d for d in domain.disks}
    diffs: list[Difference] = []
    files: list[_File] = []
    with ctx.db.transaction() as session:
        repo = Repo(session)
        volumes = repo.volumes_of_vm(vm_uuid, attached_only=True)
        lineages = repo.lineages(volumes)
        groups_of = _groups_by_snapshot(repo, vm_uuid, lineages)
        for volume in volumes:
            disk = disks.get(volume.target)
            top_ok = disk is not None and disk.path == volume.install_path
            if disk is None or disk.path is None:
                diffs.append(
                    Difference(
                        vm_uuid,
                        "volume-detached",
                        f"{volume.target} is no longer attached",
                        volume.uuid,
                        repaired=repair,
                    )
                )
                if repair:
                    volume.attached = False
                    repo.add(volume)
                continue
            if not top_ok:
                diffs.append(
                    Difference(
                        vm_uuid,
                        "top-mismatch",
                        f"{volume.target} is on {disk.path}, the metadata says "
                        f"{volume.install_path}",
                        volume.uuid,
                    )
                )
            # Every branch, not only the current top's chain: a revert to any group
            # reads its snapshots' files and everything below them.
            found, broken = _recorded_files(volume, lineages[volume.uuid], groups_of, top_ok)
            files.extend(found)
            diffs.extend(broken)
    diffs.extend(_verify_files(ctx, files))
    if not busy:  # an operation at work may be writing any of them
        diffs.extend(_verify_images(ctx, files, in_use, checked, repair=repair))
    known_files = {f.path for f in files}
    for volume in volumes:
        known_files.add(volume.install_path)
        known_files.update(s.install_path for s in lineages[volume.uuid])
    diffs.extend(_orphans(ctx, vm_uuid, volumes, known_files, live, repair=repair))
    directories = {os.path.dirname(v.install_path) for v in volumes}
    diffs.extend(
        Difference(vm_uuid, f.kind, f.detail, groups=f.groups, severity=f.severity)
        for f in memory_findings(ctx, vm_uuid, directories, busy=busy)
    )
    return diffs


def _vm_missing(ctx: OpContext, vm_uuid: str, *, repair: bool) -> list[Difference]:
    """A VM no longer defined: kept while it has groups (or its disks still read another
    VM's snapshots); with nothing left, `sync` forgets it, and so does `repair` (after
    the sync it implies). A VM whose records stay only because another VM's chain reads
    its snapshots is fine: that chain is verified with the other VM."""
    with ctx.db.transaction() as session:
        repo = Repo(session)
        volumes = repo.volumes_of_vm(vm_uuid)
        why, reader = kept_by(ctx, repo, vm_uuid, volumes), read_by(repo, vm_uuid, volumes)
    if why is not None:
        detail = f"the VM is no longer defined; its records and files are kept: {why}"
        return [Difference(vm_uuid, "vm-missing", detail)]
    if reader is not None:
        return []
    if not repair:
        detail = "the VM is no longer defined and has no groups: `sync` forgets it"
        return [Difference(vm_uuid, "vm-missing", detail)]
    with ctx.locks.vm(vm_uuid, wait=ctx.lock_wait):
        sync_locked(ctx, vm_uuid, None)
        forgotten = forget_gone(ctx, vm_uuid)
    if forgotten is None:  # changed since it was read: the next verify tells
        return []
    return [Difference(vm_uuid, "vm-missing", forgotten.detail, repaired=True)]


def _verify_images(
    ctx: OpContext, files: list[_File], in_use: leaks.InUse, checked: set[str], *, repair: bool
) -> list[Difference]:
    """ops/leaks.image_findings of the files, each as a difference of its volume."""
    by_path = {f.path: f for f in files}
    diffs = []
    for found in leaks.image_findings(ctx, by_path, in_use, checked, repair=repair):
        f = by_path[found.path]
        diff = _diff(f, found.kind, f"{found.detail} ({f.what})")
        diffs.append(replace(diff, repaired=found.repaired, severity=found.severity))
    return diffs


def _groups_by_snapshot(
    repo: Repo, vm_uuid: str, lineages: dict[str, list[SnapshotRow]]
) -> dict[str, str]:
    """snapshot uuid -> the group whose ref names it, for every snapshot of the lineages
    (by volume uuid): the VM's groups in one query, then one by one the few snapshots of
    other VMs' volumes that a clone's chain reads."""
    groups = [g.uuid for g in repo.groups(vm_uuid=vm_uuid)]
    found = {
        ref.volume_snapshot_uuid: ref.group_uuid for ref, _ in repo.refs_with_snapshots(groups)
    }
    for lineage in lineages.values():
        for snapshot in lineage:
            if snapshot.volume_uuid in lineages or snapshot.uuid in found:
                continue
            if (ref := repo.ref(snapshot.uuid)) is not None:
                found[snapshot.uuid] = ref.group_uuid
    return found


def _recorded_files(
    volume: VolumeRow, lineage: list[SnapshotRow], groups_of: dict[str, str], with_top: bool
) -> tuple[list[_File], list[Difference]]:
    """The volume's top (`with_top`) and each live snapshot of its lineage, each with its
    recorded chain and the groups that read it."""
    by_uuid = {s.uuid: s for s in lineage}
    readers: dict[str, set[str]] = {s.uuid: set() for s in lineage}
    broken: list[Difference] = []
    below: dict[str, tuple[str, ...]] = {}
    for snapshot in lineage:
        chain: list[str] = []
        current = snapshot
        seen = {snapshot.uuid}
        group = groups_of.get(snapshot.uuid)
        if group is not None:
            readers[snapshot.uuid].add(group)
        while current.parent_uuid is not None:
            parent = by_uuid.get(current.parent_uuid)
            if parent is None or parent.uuid in seen:
                if current is snapshot:
                    broken.append(
                        _dangling(volume, f"snapshot {snapshot.uuid}", snapshot.parent_uuid)
                    )
                break
            seen.add(parent.uuid)
            chain.append(parent.install_path)
            if group is not None:
                readers[parent.uuid].add(group)
            current = parent
        below[snapshot.uuid] = tuple(chain)
    files = []
    for snapshot in lineage:
        parent = by_uuid.get(snapshot.parent_uuid or "")
        files.append(
            _File(
                snapshot.install_path,
                volume,
                f"snapshot {snapshot.uuid}",
                parent.install_path if parent is not None else None,
                below[snapshot.uuid],
                tuple(sorted(readers[snapshot.uuid])),
            )
        )
    if with_top:
        parent = by_uuid.get(volume.parent_snapshot_uuid or "")
        if volume.parent_snapshot_uuid is not None and parent is None:
            broken.append(_dangling(volume, "the current top", volume.parent_snapshot_uuid))
        top_below = (parent.install_path, *below[parent.uuid]) if parent is not None else ()
        files.append(
            _File(
                volume.install_path,
                volume,
                "the current top",
                parent.install_path if parent is not None else None,
                top_below,
                (),
            )
        )
    return files, broken


def _dangling(volume: VolumeRow, what: str, parent_uuid: str | None) -> Difference:
    return Difference(
        volume.vm_uuid,
        "metadata-broken",
        f"{volume.target}: {what} names a parent snapshot {parent_uuid} the metadata does not hold",
        volume.uuid,
    )


def _verify_files(ctx: OpContext, files: list[_File]) -> list[Difference]:
    """Each file exists, and its real backing file is its recorded parent's file.

    Chains are read top first from the longest recorded chains down (the tips of the
    tree), each read giving the backing file of every layer under it, so a tree costs
    a read per branch, not per file. Reads take no lock (in-process headers, or
    `qemu-img info -U`): safe while QEMU runs. A file whose recorded chain misses a
    file is not read: the missing one is what is reported."""
    diffs: list[Difference] = []
    unique = list({f.path: f for f in files}.values())
    missing = {f.path for f in unique if not ctx.images.exists(f.path)}
    for f in unique:
        if f.path in missing:
            diffs.append(_diff(f, "file-missing", f"{f.path} is missing ({f.what})"))
    backing: dict[str, str | None] = {}
    for f in sorted(unique, key=lambda f: -len(f.below)):
        if f.path in backing or f.path in missing or missing.intersection(f.below):
            continue
        try:
            layers = ctx.images.chain(f.path, shared=True)
        except SnapgroupError as exc:
            diffs.append(_diff(f, "chain-unreadable", f"{f.path} ({f.what}): {exc.details}"))
            continue
        for layer in layers:
            backing.setdefault(layer.path, layer.backing)
    for f in unique:
        if f.parent is None or f.path not in backing or backing[f.path] == f.parent:
            continue
        diffs.append(
            _diff(
                f,
                "chain-mismatch",
                f"{f.path} ({f.what}) is backed by {backing[f.path] or 'nothing'}, the "
                f"metadata says {f.parent}",
            )
        )
    return diffs


def _diff(f: _File, kind: str, detail: str) -> Difference:
    return Difference(
        f.volume.vm_uuid, kind, f"{f.volume.target}: {detail}", f.volume.uuid, groups=f.groups
    )


def _orphans(
    ctx: OpContext,
    vm_uuid: str,
    volumes: list[VolumeRow],
    known: set[str],
    live: bool,
    *,
    repair: bool,
) -> list[Difference]:
    """UUID-named overlays beside the VM's volumes that no chain and no record uses."""
    in_chains: set[str] = set(known)
    for volume in volumes:
        try:
            in_chains.update(
                layer.path for layer in ctx.images.chain(volume.install_path, shared=live)
            )
        except SnapgroupError:
            continue
    with ctx.db.transaction() as session:
        recorded = Repo(session).all_install_paths()
    diffs = []
    for directory in sorted({os.path.dirname(v.install_path) for v in volumes}):
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            if not _OURS.match(name) or path in in_chains or path in recorded:
                continue
            backing = _backing(ctx, path)
            if backing not in in_chains:
                continue  # not on top of this VM's files: not ours to judge
            if repair:
                ctx.images.remove(path)
            diffs.append(
                Difference(
                    vm_uuid, "orphan-file", f"{path}: an overlay no chain uses", repaired=repair
                )
            )
    return diffs


def _backing(ctx: OpContext, path: str) -> str | None:
    try:
        return ctx.images.chain(path, shared=True)[0].backing
    except SnapgroupError:
        return None
