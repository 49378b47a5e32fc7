"""Backups over REST, under our own paths (`/snapgroup/backup-repositories/...`): export
a group, list, verify, restore as a new VM, prune. A client names a repository the
server serves (`snapgroup serve --backup-repo NAME=DIR`), never a directory: the server
runs as root, so where it writes is the operator's choice. A restore's disks go where
the CLI puts them by default (beside the original VM's), UUID-named.

Reads answer 200; export, verify, restore and prune run as jobs (202 + location), as
the group operations do: each is long (copies and checksums of whole disks).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from snapgroup.domain.backup_manifest import BackupManifest
from snapgroup.domain.errors import NotFound
from snapgroup.domain.validate import NAME_MAX, SHORT_NAME_PATTERN, parse_uuid, validate_name
from snapgroup.ops.backing_up import vm_uuids
from snapgroup.rest import prechecks
from snapgroup.rest.jobs import Work
from snapgroup.rest.routes.common import AUTH, JobHeader, documented
from snapgroup.rest.schemas import NAME_PATTERN, UUID_PATTERN, Location, StrictBody
from snapgroup.rest.services import Services, services

router = APIRouter(tags=["backups"], dependencies=[AUTH])
ServicesDep = Annotated[Services, Depends(services)]
RepositoryName = Annotated[str, Path(pattern=SHORT_NAME_PATTERN)]
BackupId = Annotated[str, Path(pattern=UUID_PATTERN)]
REPOSITORIES = "/snapgroup/backup-repositories"
OPERATION = documented(202, Location, 400, 401, 404, 409)


class ExportParams(StrictBody):
    groupUuid: str = Field(pattern=UUID_PATTERN)
    full: bool = Field(False, description="every disk whole, even when an increment could be")
    compress: bool = Field(False, description="the files' clusters zstd-compressed")


class ExportRequest(StrictBody):
    params: ExportParams


class VerifyParams(StrictBody):
    backupId: str | None = Field(None, pattern=UUID_PATTERN, description="omitted: every backup")


def _whole(value: object) -> object:
    """14178.0 is an integer in JSON (and to its Schema): taken as 14178; 1.5 stays a
    float, which the strict int refuses."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


class PruneParams(StrictBody):
    vm: str = Field(min_length=1, max_length=255, description="the VM's name or UUID")
    keep: Annotated[int, BeforeValidator(_whole)] = Field(
        ge=1, le=100_000, description="the VM's newest backups kept"
    )


class RestoreParams(StrictBody):
    name: str = Field(min_length=1, max_length=NAME_MAX, pattern=NAME_PATTERN)
    keepChain: bool = Field(False, description="thin overlays on the repository's files")
    start: bool = False


class _Action(BaseModel):
    # Exactly one action per body, named by its key (ZStack's action APIs).
    model_config = ConfigDict(strict=True, extra="forbid")


class VerifyAction(_Action):
    verifyBackups: VerifyParams


class PruneAction(_Action):
    pruneBackups: PruneParams


class RestoreAction(_Action):
    restoreBackup: RestoreParams


class RepositoryInventory(BaseModel):
    name: str
    path: str


class RepositoryListDocument(BaseModel):
    inventories: list[RepositoryInventory]


class DiskSummary(BaseModel):
    model_config = ConfigDict(extra="allow")
    target: str
    volumeUuid: str
    virtualSize: int
    baseBackupId: str | None
    chain: list[str]
    bytesWritten: int
    compressed: bool


class BackupSummary(BaseModel):
    model_config = ConfigDict(extra="allow")
    backupId: str
    created: str
    vmInstanceUuid: str
    vmName: str
    groupUuid: str
    groupName: str
    full: bool
    fullReason: str | None
    disks: list[DiskSummary]


class DamagedBackupDocument(BaseModel):
    backupId: str
    vmInstanceUuid: str
    problem: str = Field(description="why its manifest cannot be read")


class BackupListDocument(BaseModel):
    backups: list[BackupSummary]
    damaged: list[DamagedBackupDocument] = Field(
        description="backups not listed: their manifest is unreadable or gone"
    )


class BackupDocument(BaseModel):
    backup: BackupSummary


@router.get(
    REPOSITORIES,
    responses=documented(200, RepositoryListDocument, 401),
    summary="The backup repositories this server serves (ours)",
)
def list_repositories(svc: ServicesDep) -> dict[str, Any]:
    return {"inventories": [{"name": n, "path": p} for n, p in sorted(svc.repositories.items())]}


@router.get(
    REPOSITORIES + "/{repository}/backups",
    responses=documented(200, BackupListDocument, 400, 401, 404),
    summary="The backups in a repository, oldest first (ours)",
)
def list_backups(
    repository: RepositoryName,
    svc: ServicesDep,
    vm: Annotated[str | None, Query(max_length=255, description="a VM's name or UUID")] = None,
) -> dict[str, Any]:
    at = svc.repository(repository)
    found, damaged = svc.engine.scan_backups(at=at, vm=vm)
    return {"backups": [m.summary() for m in found], "damaged": [d.to_dict() for d in damaged]}


@router.get(
    REPOSITORIES + "/{repository}/backups/{backup_id}",
    responses=documented(200, BackupDocument, 400, 401, 404),
    summary="One backup (ours)",
)
def get_backup(repository: RepositoryName, backup_id: BackupId, svc: ServicesDep) -> dict[str, Any]:
    return {"backup": _backup(svc, svc.repository(repository), backup_id).summary()}


def _backup(svc: Services, at: str, backup_id: str) -> BackupManifest:
    wanted = parse_uuid(backup_id, "backup id")
    for m in svc.engine.backups(at=at):
        if m.backup_id == wanted:
            return m
    raise NotFound(f"no backup {wanted} in the repository at {at}")


@router.post(
    REPOSITORIES + "/{repository}/backups",
    status_code=202,
    responses=OPERATION,
    summary="Export a group into the repository: incremental when it can be (ours)",
)
def export_group(
    repository: RepositoryName,
    body: ExportRequest,
    request: Request,
    svc: ServicesDep,
    job: JobHeader = "",
) -> JSONResponse:
    params = body.params

    def precheck() -> Work:
        at = svc.repository(repository)
        group_uuid = parse_uuid(params.groupUuid, "groupUuid")
        engine = svc.engine
        row = prechecks.own_group(engine, group_uuid)
        prechecks.vm_idle(engine, row.vm_uuid)
        return lambda: {
            "backup": engine.export(
                group_uuid, to=at, full=params.full, compress=params.compress
            ).manifest.summary()
        }

    return svc.start_job(request, "export", job, precheck)


@router.put(
    REPOSITORIES + "/{repository}/actions",
    status_code=202,
    responses=OPERATION,
    summary="Verify a repository's backups, or prune a VM's (ours)",
)
def repository_action(
    repository: RepositoryName,
    body: VerifyAction | PruneAction,
    request: Request,
    svc: ServicesDep,
    job: JobHeader = "",
) -> JSONResponse:
    """verifyBackups: each file's SHA-256 and `qemu-img check`; the result says `clean`
    and names every bad file with the backups it breaks (a finding is a result, not a
    failed job). pruneBackups: the VM's oldest backups merged into their successors."""

    def precheck() -> Work:
        at = svc.repository(repository)
        engine = svc.engine
        if isinstance(body, VerifyAction):
            backup_id = body.verifyBackups.backupId
            if backup_id is not None:  # one with a damaged manifest too: its finding
                listed, damaged = engine.scan_backups(at=at)
                wanted = parse_uuid(backup_id, "backup id")
                if wanted not in {m.backup_id for m in listed} | {d.backup_id for d in damaged}:
                    raise NotFound(f"no backup {wanted} in the repository at {at}")
            return lambda: engine.verify_backup(at=at, backup_id=backup_id).to_dict()
        prune = body.pruneBackups
        (vm_uuid,) = vm_uuids(engine.backups(at=at), prune.vm)  # one VM's, or 404 / 400
        prechecks.vm_idle(engine, vm_uuid)  # queued behind the VM's exports, as they are
        return lambda: engine.prune_backups(at=at, vm=prune.vm, keep=prune.keep).to_dict()

    kind = "verify-backups" if isinstance(body, VerifyAction) else "prune-backups"
    return svc.start_job(request, kind, job, precheck)


@router.put(
    REPOSITORIES + "/{repository}/backups/{backup_id}/actions",
    status_code=202,
    responses=OPERATION,
    summary="Restore a backup as a new VM (ours)",
)
def backup_action(
    repository: RepositoryName,
    backup_id: BackupId,
    body: RestoreAction,
    request: Request,
    svc: ServicesDep,
    job: JobHeader = "",
) -> JSONResponse:
    """A new VM from the manifest's domain XML (new UUID and MACs), its disks new
    UUID-named files beside the original VM's; a damaged chain is refused in the job's
    result before anything is written."""
    params = body.restoreBackup

    def precheck() -> Work:
        at = svc.repository(repository)
        name = validate_name(params.name)
        _backup(svc, at, backup_id)
        engine = svc.engine
        return lambda: {
            "restored": engine.restore(
                backup_id, source=at, as_vm=name, keep_chain=params.keepChain, start=params.start
            ).to_dict()
        }

    return svc.start_job(request, "restore", job, precheck)
