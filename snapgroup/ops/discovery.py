"""From a libvirt domain to recorded volumes with stable UUIDs.

A volume is recognised by its current top file (which moves with every snapshot and
merge, and the engine records each move). A disk whose top file is unknown is a new
volume; a recorded volume no longer seen in the domain is marked detached.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from snapgroup.domain.errors import InvalidArgument, NotFound, OperationError
from snapgroup.domain.inventory import VolumeView
from snapgroup.domain.models import DomainInfo
from snapgroup.domain.planner import PlannedDisk, classify, volume_name
from snapgroup.domain.validate import parse_uuid
from snapgroup.ops.context import OpContext
from snapgroup.store.repo import Repo
from snapgroup.store.tables import VolumeRow


@dataclass(frozen=True)
class Discovered:
    domain: DomainInfo
    planned: tuple[PlannedDisk, ...]
    volumes: dict[str, VolumeRow]  # by target, for every disk with a deviceId and a file

    def views(self) -> list[VolumeView]:
        views = []
        for p in self.planned:
            volume = self.volumes.get(p.disk.target)
            views.append(
                VolumeView(
                    target=p.disk.target,
                    device=p.disk.device,
                    install_path=p.disk.path,
                    format=p.disk.format,
                    volume_uuid=volume.uuid if volume else None,
                    device_id=p.device_id,
                    volume_type=p.volume_type.value if p.volume_type else None,
                    volume_name=volume.name if volume else None,
                    skipped_reason=p.skip_reason,
                )
            )
        return views


def register_volumes(
    repo: Repo,
    domain: DomainInfo,
    *,
    now: datetime,
    new_uuid: Callable[[], str],
    host: str,
    known: list[VolumeRow] | None = None,
) -> Discovered:
    """`host`: the host whose libvirt shows `domain`. Its volumes are recorded as that
    host's; OperationError when the metadata says another host owns them (the same VM
    defined on two hosts sharing a store: neither may touch the other's files).
    `known`: the VM's volumes when the caller has just read them (repo.volumes_of_vm)."""
    planned = classify(domain)
    if known is None:
        known = repo.volumes_of_vm(domain.uuid)
    owners = {v.host for v in known if v.host is not None} - {host}
    if owners:
        raise OperationError(
            f"VM {domain.name} ({domain.uuid}) belongs to host {', '.join(sorted(owners))} "
            f"in the shared store, not to this host ({host})"
        )
    by_path = {v.install_path: v for v in known}
    seen: set[str] = set()
    volumes: dict[str, VolumeRow] = {}
    for p in planned:
        if p.device_id is None or p.volume_type is None or p.disk.path is None:
            continue
        row = by_path.get(p.disk.path)
        if row is None:
            row = VolumeRow(
                uuid=new_uuid(),
                vm_uuid=domain.uuid,
                vm_name=domain.name,
                target=p.disk.target,
                device_id=p.device_id,
                volume_type=p.volume_type.value,
                name=volume_name(domain.name, p.volume_type, p.disk.target),
                install_path=p.disk.path,
                format=p.disk.format or "unknown",
                last_attach_date=now,
                create_date=now,
                last_op_date=now,
                host=host,
            )
        else:
            if not row.attached:
                row.attached = True
                row.last_attach_date = now
            # host: claims a row recorded before hosts were.
            _assign(row, target=p.disk.target, device_id=p.device_id, host=host)
            _assign(row, volume_type=p.volume_type.value, vm_name=domain.name)
        seen.add(row.uuid)
        volumes[p.disk.target] = row
    detached = [row for row in known if row.uuid not in seen and row.attached]
    for row in detached:
        row.attached = False
        row.last_op_date = now
    repo.add(*volumes.values(), *detached)  # one flush, not one per disk
    return Discovered(domain, tuple(planned), volumes)


def _assign(row: VolumeRow, **values: object) -> None:
    """Sets only what differs: the ORM would flush every set attribute's row, changed
    or not (16 disks at the start of every operation)."""
    for name, value in values.items():
        if getattr(row, name) != value:
            setattr(row, name, value)


def discover(ctx: OpContext, domain: DomainInfo) -> Discovered:
    """The domain's disks recorded as volumes, in a transaction of their own (once this
    host owns the VM, or has taken it over)."""
    ctx.check_owner(domain.uuid, domain=domain, looked_up=True)
    with ctx.db.transaction() as session:
        return register_volumes(
            Repo(session), domain, now=ctx.clock(), new_uuid=ctx.new_uuid, host=ctx.host
        )


def domain_of(ctx: OpContext, *, vm: str | None, root_volume_uuid: str | None) -> DomainInfo:
    """The domain named by exactly one of a VM (name or UUID) or its root volume."""
    if (vm is None) == (root_volume_uuid is None):
        raise InvalidArgument("give exactly one of a VM (name or UUID) or a root volume UUID")
    if vm is not None:
        domain = ctx.hv.lookup(vm)
        # Before the lock: a take-over moves the rows and any interrupted operation of
        # the old owner, which the operation's sync then finishes first.
        ctx.check_owner(domain.uuid, domain=domain, looked_up=True)
        return domain
    volume_uuid = parse_uuid(root_volume_uuid or "", "rootVolumeUuid")
    with ctx.db.transaction() as session:
        volume = Repo(session).volume(volume_uuid)
    if volume is None:
        raise NotFound(f"volume {volume_uuid} is not known (run `snapgroup volumes` first)")
    if volume.volume_type != "Root":
        raise InvalidArgument(f"volume {volume_uuid} is a {volume.volume_type} volume, not Root")
    ctx.check_owner(volume.vm_uuid)
    return ctx.hv.lookup(volume.vm_uuid)
