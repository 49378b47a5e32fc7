"""ZStack's volume snapshot calls: QueryVolumeSnapshot (`GET /volume-snapshots`, the
query language in Python), QueryVolumeSnapshotTree (`GET /volume-snapshots/trees`: one
tree per volume, its snapshots by parent link) and DeleteVolumeSnapshot (`DELETE
/volume-snapshots/{uuid}`, a job, as `snapgroup delete-snapshot`: merged away alone, its
group ref kept as snapshotDeleted) and RevertVolumeFromSnapshot (`PUT
/volume-snapshots/{uuid}/actions`, a job: a group revert of that volume alone)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.convertors import Convertor, register_url_convertor

from snapgroup.api import DeleteMode
from snapgroup.domain.errors import InvalidArgument, NotFound
from snapgroup.domain.inventory import zstack_date
from snapgroup.domain.validate import parse_uuid
from snapgroup.domain.zquery import Kind, patterns
from snapgroup.rest import prechecks
from snapgroup.rest.jobs import Work
from snapgroup.rest.routes.common import AUTH, JobHeader, documented, query_reply
from snapgroup.rest.routes.groups import DeleteModeQuery
from snapgroup.rest.schemas import (
    UUID_PATTERN,
    Location,
    SnapshotQueryDocument,
    TreeQueryDocument,
)
from snapgroup.rest.services import Services, services
from snapgroup.store.repo import Repo
from snapgroup.store.resource_rows import live_snapshots
from snapgroup.store.tables import SnapshotRow, VolumeRow

router = APIRouter(tags=["volume snapshots"], dependencies=[AUTH])


class _UuidConvertor(Convertor[str]):
    """Routes /volume-snapshots/{uuid} by a UUID only: /volume-snapshots/group is not
    one (else its Allow header would name this route's DELETE)."""

    regex = "[0-9a-fA-F-]{32,36}"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("zuuid", _UuidConvertor())
ServicesDep = Annotated[Services, Depends(services)]

SNAPSHOT_FIELDS: dict[str, Kind] = {
    "uuid": Kind.TEXT,
    "name": Kind.TEXT,
    "volumeUuid": Kind.TEXT,
    "treeUuid": Kind.TEXT,
    "parentUuid": Kind.TEXT,
    "primaryStorageInstallPath": Kind.TEXT,
    "volumeType": Kind.TEXT,
    "groupUuid": Kind.TEXT,
    "latest": Kind.BOOL,
    "status": Kind.TEXT,
    "createDate": Kind.DATE,
    "lastOpDate": Kind.DATE,
}
TREE_FIELDS: dict[str, Kind] = {"uuid": Kind.TEXT, "volumeUuid": Kind.TEXT}
_CONDITION, _SORT, _FIELDS = patterns(SNAPSHOT_FIELDS)
_TREE_CONDITION, _, _ = patterns(TREE_FIELDS)


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def _snapshot(
    s: SnapshotRow, v: VolumeRow, group: str | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(values to query, ZStack's VolumeSnapshotInventory)."""
    values: dict[str, Any] = {
        "uuid": s.uuid,
        "name": s.name,
        "volumeUuid": v.uuid,
        "treeUuid": v.uuid,  # one tree per volume
        "parentUuid": s.parent_uuid,
        "primaryStorageInstallPath": s.install_path,
        "volumeType": v.volume_type,
        "groupUuid": group,
        "latest": v.parent_snapshot_uuid == s.uuid,
        "status": "Changed" if s.changed else "Ready",
        "createDate": _utc(s.create_date),
        "lastOpDate": _utc(s.last_op_date),
    }
    inventory = {
        **values,
        "description": None,
        "type": "Hypervisor",
        "format": "qcow2",
        "state": "Enabled",
        "statusReason": s.changed,
        "createDate": zstack_date(s.create_date),
        "lastOpDate": zstack_date(s.last_op_date),
    }
    return values, inventory


@router.get(
    "/volume-snapshots",
    responses=documented(200, SnapshotQueryDocument, 400, 401),
    summary="QueryVolumeSnapshot",
)
def query_snapshots(
    svc: ServicesDep,
    q: Annotated[list[Annotated[str, Query(pattern=_CONDITION)]] | None, Query()] = None,
    limit: Annotated[int | None, Query(ge=0)] = None,
    start: Annotated[int | None, Query(ge=0)] = None,
    count: str | None = None,
    replyWithCount: str | None = None,
    sort: Annotated[str | None, Query(pattern=_SORT)] = None,
    fields: Annotated[str | None, Query(pattern=_FIELDS)] = None,
) -> JSONResponse:
    with svc.engine.db.transaction() as session:
        rows = live_snapshots(session)
    return query_reply(
        SNAPSHOT_FIELDS, [_snapshot(*row) for row in rows], q=q or (), limit=limit,
        start=start, count=count, reply_with_count=replyWithCount, sort=sort, fields=fields,
    )  # fmt: skip


def _leaf(
    uuid: str,
    inventories: dict[str, dict[str, Any]],
    kids: dict[str | None, list[str]],
    branch: set[str],
) -> dict[str, Any]:
    inventory = inventories[uuid]
    return {
        "inventory": inventory,
        "parentUuid": inventory["parentUuid"],
        "current": uuid in branch,  # **ours**: on the branch the volume's top sits on
        "children": [_leaf(k, inventories, kids, branch) for k in kids.get(uuid, [])],
    }


def _branch(top: str | None, inventories: dict[str, dict[str, Any]]) -> set[str]:
    """The snapshots the volume's current top descends from: its parent snapshot up to
    the root. After a revert, the branch left behind is not on it."""
    branch: set[str] = set()
    while top in inventories and top not in branch:
        branch.add(top)
        top = inventories[top]["parentUuid"]
    return branch


@router.get(
    "/volume-snapshots/trees",
    responses=documented(200, TreeQueryDocument, 400, 401),
    summary="QueryVolumeSnapshotTree",
)
def query_trees(
    svc: ServicesDep,
    q: Annotated[list[Annotated[str, Query(pattern=_TREE_CONDITION)]] | None, Query()] = None,
    limit: Annotated[int | None, Query(ge=0)] = None,
    start: Annotated[int | None, Query(ge=0)] = None,
    count: str | None = None,
    replyWithCount: str | None = None,
) -> JSONResponse:
    """One tree per volume (`uuid` = the volume's): its oldest snapshot at the root,
    each snapshot's children those made on it, oldest first (several after a revert).
    `current`: the volume's top sits on a snapshot of the tree; each leaf says whether
    it is on that branch."""
    with svc.engine.db.transaction() as session:
        rows = live_snapshots(session)
    by_volume: dict[str, list[dict[str, Any]]] = {}
    first: dict[str, SnapshotRow] = {}
    tops: dict[str, str | None] = {}
    for s, v, group in rows:
        by_volume.setdefault(v.uuid, []).append(_snapshot(s, v, group)[1])
        first.setdefault(v.uuid, s)
        tops[v.uuid] = v.parent_snapshot_uuid
    items = []
    for volume_uuid, inventories in by_volume.items():
        by_uuid = {i["uuid"]: i for i in inventories}
        kids: dict[str | None, list[str]] = {}
        for i in inventories:  # a parent no longer listed (deleted): a root of its own
            parent = i["parentUuid"] if i["parentUuid"] in by_uuid else None
            kids.setdefault(parent, []).append(i["uuid"])
        branch = _branch(tops[volume_uuid], by_uuid)
        roots = [_leaf(r, by_uuid, kids, branch) for r in kids.get(None, [])]
        tree = roots[0] if len(roots) == 1 else {"inventory": None, "children": roots}
        values = {"uuid": volume_uuid, "volumeUuid": volume_uuid}
        inventory = {
            **values,
            "current": bool(branch),
            "status": "Completed",
            "tree": tree,
            "createDate": zstack_date(first[volume_uuid].create_date),
            "lastOpDate": zstack_date(first[volume_uuid].last_op_date),
        }
        items.append((values, inventory))
    return query_reply(
        TREE_FIELDS, items, q=q or (), limit=limit, start=start, count=count,
        reply_with_count=replyWithCount,
    )  # fmt: skip


@router.delete(
    "/volume-snapshots/{uuid:zuuid}",
    status_code=202,
    responses=documented(202, Location, 400, 401, 404, 409),
    summary="DeleteVolumeSnapshot",
)
def delete_snapshot(
    uuid: Annotated[str, Path(pattern=UUID_PATTERN)],
    request: Request,
    svc: ServicesDep,
    deleteMode: DeleteModeQuery = None,
    job: JobHeader = "",
) -> JSONResponse:
    """The job's result is `{"results": [{snapshotUuid, volumeUuid, success, error}]}`
    (+ "error", 503, when it failed)."""

    def precheck() -> Work:
        snapshot_uuid = parse_uuid(uuid, "uuid")
        mode = DeleteMode.parse(deleteMode or DeleteMode.PERMISSIVE)
        engine = svc.engine
        with engine.db.transaction() as session:
            repo = Repo(session)
            snapshot = repo.snapshot(snapshot_uuid)
            volume = repo.volume(snapshot.volume_uuid) if snapshot is not None else None
        if snapshot is None or snapshot.deleted or volume is None:
            raise NotFound(f"volume snapshot {snapshot_uuid} not found")
        vm_uuid = volume.vm_uuid
        engine.check_owner(vm_uuid)
        prechecks.vm_idle(engine, vm_uuid)

        def work() -> dict[str, Any]:
            result = engine.delete_snapshot(snapshot_uuid, mode=mode)
            document: dict[str, Any] = {"results": [result.to_dict()]}
            if result.error is not None:
                document["error"] = result.error.to_dict()
            return document

        return work

    return svc.start_job(request, "delete-snapshot", job, precheck)


class RevertParams(BaseModel):
    model_config = ConfigDict(extra="ignore")


class RevertVolumeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    revertVolumeFromSnapshot: RevertParams
    systemTags: list[str] | None = None
    userTags: list[str] | None = None


@router.put(
    "/volume-snapshots/{uuid:zuuid}/actions",
    status_code=202,
    responses=documented(202, Location, 400, 401, 404, 409),
    summary="RevertVolumeFromSnapshot",
)
def revert_volume(
    uuid: Annotated[str, Path(pattern=UUID_PATTERN)],
    body: RevertVolumeRequest,
    request: Request,
    svc: ServicesDep,
    job: JobHeader = "",
) -> JSONResponse:
    """Served by a group revert of that volume alone: the snapshot must be in a group
    (400 otherwise) and the VM stopped (the job fails otherwise); a safety group of the
    current state is taken first. The job's result: `{"results", "safetyGroupUuid"}`."""

    def precheck() -> Work:
        snapshot_uuid = parse_uuid(uuid, "uuid")
        engine = svc.engine
        with engine.db.transaction() as session:
            repo = Repo(session)
            snapshot, ref = repo.snapshot(snapshot_uuid), repo.ref(snapshot_uuid)
            volume = repo.volume(snapshot.volume_uuid) if snapshot is not None else None
        if snapshot is None or snapshot.deleted or volume is None:
            raise NotFound(f"volume snapshot {snapshot_uuid} not found")
        if ref is None:
            raise InvalidArgument(
                f"volume snapshot {snapshot_uuid} is in no group: only a group's can be reverted to"
            )
        engine.check_owner(volume.vm_uuid)
        prechecks.vm_idle(engine, volume.vm_uuid)
        return lambda: engine.revert_volume(snapshot_uuid).to_response()

    return svc.start_job(request, "revert-volume", job, precheck)
