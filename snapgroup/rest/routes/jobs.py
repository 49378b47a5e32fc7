"""/api-jobs/{uuid}: where a client polls a long operation (snapgroup.rest.jobs)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Response
from fastapi.responses import JSONResponse

from snapgroup.rest.jobs import STATE_HEADER
from snapgroup.rest.routes.common import AUTH, documented
from snapgroup.rest.schemas import UUID_PATTERN, ErrorDocument, ResultsDocument
from snapgroup.rest.services import Services, services

router = APIRouter(tags=["jobs"], dependencies=[AUTH])

_RESPONSES: dict[int | str, Any] = {
    **documented(200, ResultsDocument, 400, 401, 404),
    202: {
        "description": "not done: poll again (empty body, as ZStack); the X-Job-State "
        "header says Waiting (for its turn on the VM) or Running"
    },
    503: {"model": ErrorDocument, "description": "the operation failed: its error document"},
}


@router.get("/api-jobs/{uuid}", responses=_RESPONSES, summary="Poll a job")
def poll_job(
    uuid: Annotated[str, Path(pattern=UUID_PATTERN)], svc: Annotated[Services, Depends(services)]
) -> Response:
    job = svc.jobs.get(uuid)
    if job.status is None:
        return Response(status_code=202, headers={STATE_HEADER: job.state})
    return JSONResponse(job.document, status_code=job.status)
