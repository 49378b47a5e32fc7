"""Read-only ZStack resources a client's journey needs before it creates a group:
QueryVmInstance (`GET /vm-instances`: uuid, name, state, rootVolumeUuid, allVolumes)
and QueryVolume (`GET /volumes`), in ZStack's inventory shapes (the fields that mean
something on a libvirt host), with the groups' query language, run in Python: a host has
few VMs and volumes. The VMs are libvirt's (Engine.vm_instances): a recorded one with
its volumes (discovered again), an unrecorded one without (`snapgroup volumes`, or any
operation, records a VM; this GET does not); the state is libvirt's now. The volumes
are the recorded ones."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from snapgroup.domain.inventory import zstack_date
from snapgroup.domain.zquery import Kind, patterns
from snapgroup.ops.queries import VmInstance
from snapgroup.rest.routes.common import AUTH, documented, query_reply
from snapgroup.rest.schemas import VmQueryDocument, VolumeQueryDocument
from snapgroup.rest.services import Services, services
from snapgroup.store.resource_rows import all_volumes
from snapgroup.store.tables import VolumeRow

router = APIRouter(tags=["vm instances and volumes"], dependencies=[AUTH])
ServicesDep = Annotated[Services, Depends(services)]

VOLUME_FIELDS: dict[str, Kind] = {
    "uuid": Kind.TEXT,
    "name": Kind.TEXT,
    "vmInstanceUuid": Kind.TEXT,
    "lastVmInstanceUuid": Kind.TEXT,
    "installPath": Kind.TEXT,
    "type": Kind.TEXT,
    "format": Kind.TEXT,
    "deviceId": Kind.INT,
    "state": Kind.TEXT,
    "status": Kind.TEXT,
    "createDate": Kind.DATE,
    "lastOpDate": Kind.DATE,
    "lastAttachDate": Kind.DATE,
}
VM_FIELDS: dict[str, Kind] = {
    "uuid": Kind.TEXT,
    "name": Kind.TEXT,
    "state": Kind.TEXT,
    "rootVolumeUuid": Kind.TEXT,
    "type": Kind.TEXT,
    "hypervisorType": Kind.TEXT,
    "createDate": Kind.DATE,
    "lastOpDate": Kind.DATE,
}


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def _volume(row: VolumeRow) -> tuple[dict[str, Any], dict[str, Any]]:
    """(values to query, ZStack's VolumeInventory)."""
    values: dict[str, Any] = {
        "uuid": row.uuid,
        "name": row.name,
        "vmInstanceUuid": row.vm_uuid if row.attached else None,
        "lastVmInstanceUuid": row.vm_uuid,
        "installPath": row.install_path,
        "type": row.volume_type,
        "format": row.format,
        "deviceId": row.device_id,
        "state": "Enabled",
        "status": "Ready",
        "createDate": _utc(row.create_date),
        "lastOpDate": _utc(row.last_op_date),
        "lastAttachDate": _utc(row.last_attach_date),
    }
    inventory = {
        **values,
        "description": None,
        "isShareable": False,
        "createDate": zstack_date(row.create_date),
        "lastOpDate": zstack_date(row.last_op_date),
        "lastAttachDate": zstack_date(row.last_attach_date),
    }
    return values, inventory


def _vm(vm: VmInstance) -> tuple[dict[str, Any], dict[str, Any]]:
    root = next((v for v in vm.volumes if v.volume_type == "Root"), None)
    # Dates: the volumes' (the first recorded, the last changed); none when unrecorded.
    first = min((v.create_date for v in vm.volumes), default=None)
    last = max((v.last_op_date for v in vm.volumes), default=None)
    values: dict[str, Any] = {
        "uuid": vm.uuid,
        "name": vm.name,
        "state": vm.state,
        "rootVolumeUuid": root.uuid if root else None,
        "type": "UserVm",
        "hypervisorType": "KVM",
        "createDate": _utc(first) if first else None,
        "lastOpDate": _utc(last) if last else None,
    }
    inventory = {
        **values,
        "description": None,
        "createDate": zstack_date(first) if first else None,
        "lastOpDate": zstack_date(last) if last else None,
        "allVolumes": [_volume(v)[1] for v in vm.volumes],
        "vmNics": [],
        "vmCdRoms": [],
    }
    return values, inventory


_VOL_CONDITION, _VOL_SORT, _VOL_FIELDS = patterns(VOLUME_FIELDS)
_VM_CONDITION, _VM_SORT, _VM_FIELDS = patterns(VM_FIELDS)


@router.get(
    "/volumes",
    responses=documented(200, VolumeQueryDocument, 400, 401),
    summary="QueryVolume",
)
def query_volumes(
    svc: ServicesDep,
    q: Annotated[list[Annotated[str, Query(pattern=_VOL_CONDITION)]] | None, Query()] = None,
    limit: Annotated[int | None, Query(ge=0)] = None,
    start: Annotated[int | None, Query(ge=0)] = None,
    count: str | None = None,
    replyWithCount: str | None = None,
    sort: Annotated[str | None, Query(pattern=_VOL_SORT)] = None,
    fields: Annotated[str | None, Query(pattern=_VOL_FIELDS)] = None,
) -> JSONResponse:
    with svc.engine.db.transaction() as session:
        rows = all_volumes(session)
    items = [_volume(r) for r in rows]
    return query_reply(
        VOLUME_FIELDS, items, q=q or (), limit=limit, start=start, count=count,
        reply_with_count=replyWithCount, sort=sort, fields=fields,
    )  # fmt: skip


@router.get(
    "/vm-instances",
    responses=documented(200, VmQueryDocument, 400, 401),
    summary="QueryVmInstance",
)
def query_vms(
    svc: ServicesDep,
    q: Annotated[list[Annotated[str, Query(pattern=_VM_CONDITION)]] | None, Query()] = None,
    limit: Annotated[int | None, Query(ge=0)] = None,
    start: Annotated[int | None, Query(ge=0)] = None,
    count: str | None = None,
    replyWithCount: str | None = None,
    sort: Annotated[str | None, Query(pattern=_VM_SORT)] = None,
    fields: Annotated[str | None, Query(pattern=_VM_FIELDS)] = None,
) -> JSONResponse:
    items = [_vm(vm) for vm in svc.engine.vm_instances()]
    return query_reply(
        VM_FIELDS, items, q=q or (), limit=limit, start=start, count=count,
        reply_with_count=replyWithCount, sort=sort, fields=fields,
    )  # fmt: skip
