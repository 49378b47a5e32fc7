"""/volume-snapshots/...: the seed's snapshot-group API and ZStack's lifecycle actions.

Operations answer 202 and run as jobs (snapgroup.rest.jobs); queries answer 200.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse

from snapgroup.api import DeleteMode, Engine
from snapgroup.domain.errors import InvalidArgument, NotFound
from snapgroup.domain.validate import parse_uuid, validate_description, validate_name
from snapgroup.domain.zquery import CONDITION_PATTERN, FIELDS_PATTERN, SORT_PATTERN, parse_query
from snapgroup.ops.delete import DeleteRefused
from snapgroup.rest import prechecks
from snapgroup.rest.jobs import Work
from snapgroup.rest.routes.common import AUTH, JobHeader, documented
from snapgroup.rest.schemas import (
    UUID_LIST_PATTERN,
    UUID_PATTERN,
    AvailabilityDocument,
    CreateGroupRequest,
    GroupActionRequest,
    Location,
    QueryDocument,
    UpdateAction,
)
from snapgroup.rest.services import Services, services

router = APIRouter(tags=["volume snapshot groups"], dependencies=[AUTH])
ServicesDep = Annotated[Services, Depends(services)]
GroupUuid = Annotated[str, Path(pattern=UUID_PATTERN)]
DeleteModeQuery = Annotated[
    Literal["Permissive", "Enforcing"] | None, Query(description="default Permissive")
]
GROUP = "/volume-snapshots/group"
OPERATION = documented(202, Location, 400, 401, 404, 409)


@router.post(GROUP, status_code=202, responses=OPERATION, summary="CreateVolumeSnapshotGroup")
def create_group(
    body: CreateGroupRequest, request: Request, svc: ServicesDep, job: JobHeader = ""
) -> JSONResponse:
    params = body.params

    def precheck() -> Work:
        name = validate_name(params.name)
        description = validate_description(params.description)
        root = parse_uuid(params.rootVolumeUuid, "rootVolumeUuid")
        resource = parse_uuid(params.resourceUuid, "resourceUuid") if params.resourceUuid else None
        engine = svc.engine
        if resource is not None and prechecks.group_row(engine, resource) is not None:
            raise InvalidArgument(f"resourceUuid {resource} is already used by a group")
        prechecks.vm_idle(engine, prechecks.root_volume_vm(engine, root))
        return lambda: {
            "inventory": engine.create(
                root_volume_uuid=root,
                name=name,
                description=description,
                resource_uuid=resource,
                with_memory=bool(params.withMemory),
            ).to_inventory()
        }

    return svc.start_job(request, "create", job, precheck)


@router.delete(
    GROUP + "/{uuid}", status_code=202, responses=OPERATION, summary="DeleteVolumeSnapshotGroup"
)
def delete_group(
    uuid: GroupUuid,
    request: Request,
    svc: ServicesDep,
    deleteMode: DeleteModeQuery = None,
    job: JobHeader = "",
) -> JSONResponse:
    def precheck() -> Work:
        group_uuid = parse_uuid(uuid, "uuid")
        mode = DeleteMode.parse(deleteMode or DeleteMode.PERMISSIVE)
        engine = svc.engine
        row = prechecks.group_row(engine, group_uuid)
        if row is not None:  # an unknown group is deleted already (ZStack: success)
            engine.check_owner(row.vm_uuid)
            prechecks.vm_idle(engine, row.vm_uuid)
        return lambda: _delete(engine, group_uuid, mode)

    return svc.start_job(request, "delete", job, precheck)


def _delete(engine: Engine, group_uuid: str, mode: DeleteMode) -> dict[str, Any]:
    try:
        return engine.delete(group_uuid, mode=mode).to_response()
    except DeleteRefused as refused:  # Permissive refused: every ref's result, and why
        return refused.report.to_response()


@router.put(
    GROUP + "/{uuid}/actions",
    status_code=202,
    responses=OPERATION,
    summary="UpdateVolumeSnapshotGroup / RevertVmFromSnapshotGroup",
)
def group_action(
    uuid: GroupUuid,
    body: GroupActionRequest,
    request: Request,
    svc: ServicesDep,
    job: JobHeader = "",
) -> JSONResponse:
    update = body.updateVolumeSnapshotGroup if isinstance(body, UpdateAction) else None
    action = "update" if update is not None else "revert"

    def precheck() -> Work:
        group_uuid = parse_uuid(uuid, "uuid")
        engine = svc.engine
        if update is not None:
            name = validate_name(update.name) if update.name is not None else None
            description = validate_description(update.description)
            prechecks.own_group(engine, group_uuid)
            return lambda: {
                "inventory": engine.update(
                    group_uuid, name=name, description=description
                ).to_inventory()
            }
        row = prechecks.own_group(engine, group_uuid)
        prechecks.vm_idle(engine, row.vm_uuid)
        return lambda: engine.revert(group_uuid).to_response()

    return svc.start_job(request, action, job, precheck)


@router.delete(
    "/volume-snapshots/ungroup/{uuid}",
    status_code=202,
    responses=OPERATION,
    summary="UngroupVolumeSnapshotGroup",
)
def ungroup_group(
    uuid: GroupUuid, request: Request, svc: ServicesDep, job: JobHeader = ""
) -> JSONResponse:
    def precheck() -> Work:
        group_uuid = parse_uuid(uuid, "uuid")
        engine = svc.engine
        row = prechecks.own_group(engine, group_uuid)
        prechecks.vm_idle(engine, row.vm_uuid)
        return lambda: {"inventory": engine.ungroup(group_uuid).to_inventory()}

    return svc.start_job(request, "ungroup", job, precheck)


@router.get(GROUP, responses=documented(200, QueryDocument, 400, 401), summary="Query groups")
def query_groups(
    svc: ServicesDep,
    q: Annotated[
        list[Annotated[str, Query(pattern=CONDITION_PATTERN)]] | None,
        Query(description="<field><op><value>, repeatable; all must hold"),
    ] = None,
    limit: Annotated[int | None, Query(ge=0)] = None,
    start: Annotated[int | None, Query(ge=0)] = None,
    count: Annotated[str | None, Query(description="true: only the total")] = None,
    replyWithCount: Annotated[str | None, Query(description="true: the total too")] = None,
    sort: Annotated[str | None, Query(pattern=SORT_PATTERN, description="+field or -field")] = None,
    fields: Annotated[
        str | None, Query(pattern=FIELDS_PATTERN, description="a,b: only these fields")
    ] = None,
    groupBy: Annotated[str | None, Query(description="accepted, ignored")] = None,
) -> JSONResponse:
    query = parse_query(
        q=q or (),
        limit=limit,
        start=start,
        count=count,
        reply_with_count=replyWithCount,
        sort=sort,
        fields=fields,
    )
    # A JSONResponse: FastAPI's encoder would walk every ref's dict again (~2x the query).
    return JSONResponse(svc.engine.query_groups(query).reply(query))


@router.get(GROUP + "/{uuid}", responses=documented(200, QueryDocument, 400, 401))
def get_group(uuid: GroupUuid, svc: ServicesDep) -> dict[str, Any]:
    """As ZStack: a query by uuid, `{"inventories": []}` when there is no such group."""
    group_uuid = parse_uuid(uuid, "uuid")
    try:
        return {"inventories": [svc.engine.get(group_uuid).to_inventory()]}
    except NotFound:
        return {"inventories": []}


@router.get(
    "/volume-snapshots/groups/availabilities",
    responses=documented(200, AvailabilityDocument, 400, 401, 404, 409),
    summary="CheckVolumeSnapshotGroupAvailability",
)
def availabilities(
    svc: ServicesDep,
    uuids: Annotated[
        list[Annotated[str, Query(pattern=UUID_LIST_PATTERN)]],
        Query(description="group uuids: repeated or comma-separated"),
    ],
) -> dict[str, Any]:
    wanted = [u for value in uuids for u in value.split(",") if u.strip()]
    if not wanted:
        raise InvalidArgument("uuids names no group")
    return {"results": [a.to_dict() for a in svc.engine.check(wanted)]}
