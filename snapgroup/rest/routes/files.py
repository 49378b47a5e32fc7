"""The files of a group or of a served repository's backup, over REST (ours): list the
filesystems or a directory, download one path (a file's bytes, streamed; a directory as
a tar stream). Behind the session check as every call; each request starts one
appliance (libguestfs: the guest's filesystem is parsed by the appliance's kernel, never
the host's), held until the reply is sent; the group's VM (or the backup's VM's backups)
stays locked as long. A client names a served repository, never a directory.
"""

from __future__ import annotations

import urllib.parse
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict

from snapgroup.domain.validate import SHORT_NAME_PATTERN, parse_uuid
from snapgroup.ops.guest_sources import FilesSource
from snapgroup.rest.routes.common import AUTH, documented
from snapgroup.rest.schemas import UUID_PATTERN
from snapgroup.rest.services import Services, services

router = APIRouter(tags=["files"], dependencies=[AUTH])
ServicesDep = Annotated[Services, Depends(services)]
GroupUuid = Annotated[str, Path(pattern=UUID_PATTERN)]
RepositoryName = Annotated[str, Path(pattern=SHORT_NAME_PATTERN)]
BackupId = Annotated[str, Path(pattern=UUID_PATTERN)]
Disk = Annotated[
    str | None, Query(pattern=r"^[a-z]{2,5}$", description="only this disk (vda, vdb...)")
]
Fs = Annotated[
    str | None,
    Query(min_length=1, max_length=255, description="the filesystem, as listed: vdb1, vg0/root"),
]
PATH_PATTERN = r"^/[^\x00]*$"
GuestPath = Annotated[
    str,
    Query(
        min_length=1,
        max_length=4096,
        pattern=PATH_PATTERN,
        description="an absolute path in the filesystem",
    ),
]
GROUP_FILES = "/snapgroup/groups/{group_uuid}/files"
BACKUP_FILES = "/snapgroup/backup-repositories/{repository}/backups/{backup_id}/files"
_STREAM: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "a file's bytes (application/octet-stream), or a directory's tree "
        "as a tar stream (application/x-tar, numeric owners, pax mtimes)",
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "application/x-tar": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


class FilesDocument(BaseModel):
    """Without `path`: `filesystems` [{name, kind, disks, fstype, size, label, uuid,
    mountable}]. With it: `filesystem`, `path` and `entries` [{name, type, size, mtime,
    mtimeNs, mode, uid, gid, target}]."""

    model_config = ConfigDict(extra="allow")
    source: dict[str, Any]


def _listing(
    svc: Services, source: FilesSource, disk: str | None, fs: str | None, path: str | None
) -> dict[str, Any]:
    return svc.engine.files(source, disk=disk, fs=fs, path=path).to_dict()


def _download(
    svc: Services, source: FilesSource, path: str, disk: str | None, fs: str | None
) -> StreamingResponse:
    got = svc.engine.download(source, path, disk=disk, fs=fs)
    name = got.name + (".tar" if got.type == "directory" else "")
    fallback = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:200] or "download"
    headers = {
        # The name is the guest's: quoted for ASCII clients, exact in filename*.
        "Content-Disposition": f'attachment; filename="{fallback}"; '
        f"filename*=UTF-8''{urllib.parse.quote(name, safe='')}",
        "X-Snapgroup-File-Type": got.type,
        "X-Snapgroup-Mtime-Ns": str(got.mtime_ns),
    }
    if got.size is not None:
        headers["Content-Length"] = str(got.size)
    media = "application/x-tar" if got.type == "directory" else "application/octet-stream"
    return StreamingResponse(got.chunks, media_type=media, headers=headers)


@router.get(
    GROUP_FILES,
    responses=documented(200, FilesDocument, 400, 401, 404, 409, 422),
    summary="A group's filesystems, or a directory in one (ours)",
)
def group_files(
    group_uuid: GroupUuid,
    svc: ServicesDep,
    disk: Disk = None,
    fs: Fs = None,
    path: Annotated[str | None, Query(max_length=4096, pattern=PATH_PATTERN)] = None,
) -> dict[str, Any]:
    source = FilesSource(group=parse_uuid(group_uuid, "group uuid"))
    return _listing(svc, source, disk, fs, path)


@router.get(
    GROUP_FILES + "/content",
    response_class=StreamingResponse,
    responses={**documented(200, FilesDocument, 400, 401, 404, 409, 422), **_STREAM},
    summary="Download a path of a group: a file, or a directory as tar (ours)",
)
def group_file_content(
    group_uuid: GroupUuid, path: GuestPath, svc: ServicesDep, disk: Disk = None, fs: Fs = None
) -> StreamingResponse:
    source = FilesSource(group=parse_uuid(group_uuid, "group uuid"))
    return _download(svc, source, path, disk, fs)


@router.get(
    BACKUP_FILES,
    responses=documented(200, FilesDocument, 400, 401, 404, 409, 422),
    summary="A served backup's filesystems, or a directory in one (ours)",
)
def backup_files(
    repository: RepositoryName,
    backup_id: BackupId,
    svc: ServicesDep,
    disk: Disk = None,
    fs: Fs = None,
    path: Annotated[str | None, Query(max_length=4096, pattern=PATH_PATTERN)] = None,
) -> dict[str, Any]:
    source = FilesSource(backup=backup_id, at=svc.repository(repository))
    return _listing(svc, source, disk, fs, path)


@router.get(
    BACKUP_FILES + "/content",
    response_class=StreamingResponse,
    responses={**documented(200, FilesDocument, 400, 401, 404, 409, 422), **_STREAM},
    summary="Download a path of a served backup: a file, or a directory as tar (ours)",
)
def backup_file_content(
    repository: RepositoryName,
    backup_id: BackupId,
    path: GuestPath,
    svc: ServicesDep,
    disk: Disk = None,
    fs: Fs = None,
) -> StreamingResponse:
    source = FilesSource(backup=backup_id, at=svc.repository(repository))
    return _download(svc, source, path, disk, fs)
