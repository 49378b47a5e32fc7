"""Pieces every route module uses: the documented credential and error responses, the
reply of a query run in Python."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import Depends, Header
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel

from snapgroup.domain.zquery import Kind, parse_query
from snapgroup.rest.jobs import JOB_HEADER
from snapgroup.rest.query import run_plain
from snapgroup.rest.schemas import UUID_PATTERN, ErrorDocument

# Documents the credential in the OpenAPI document. The check itself is SessionGuard's
# (snapgroup.rest.guard), which runs before a body is even read.
_SESSION = APIKeyHeader(
    name="Authorization",
    scheme_name="OAuthSession",
    description="`OAuth <session uuid>`: the uuid of PUT /v1/accounts/login's inventory",
    auto_error=False,
)
AUTH = Depends(_SESSION)
# A str with "" for none (not str | None): the document must not offer a null header.
JobHeader = Annotated[
    str,
    Header(
        alias=JOB_HEADER,
        pattern=f"^$|{UUID_PATTERN}",
        description="names the job (32 hex digits); a retry with it gets the same job",
    ),
]

_ERRORS = {
    400: "invalid argument (SYS.1007) or a malformed request",
    401: "no session, or an unknown or expired one (ID.1001); wrong login (ID.1000)",
    404: "not found (SYS.1003)",
    409: "the VM is busy (SYS.1011) or in the wrong state, or another host's (SYS.1006)",
    422: "the guest's filesystem cannot be read: a damaged superblock, not a filesystem "
    "(FILES.1000)",
}


def documented(status: int, model: type[BaseModel], *errors: int) -> dict[int | str, Any]:
    """The `responses` of a route: its success document and the errors it may answer."""
    responses: dict[int | str, Any] = {status: {"model": model}}
    for code in errors:
        responses[code] = {"model": ErrorDocument, "description": _ERRORS[code]}
    return responses


def query_reply(
    schema: Mapping[str, Kind], items: list[tuple[dict[str, Any], dict[str, Any]]], **params: Any
) -> JSONResponse:
    """The reply of a query over `items` ((values, inventory) pairs), run in Python and
    serialised once (a dict answered would be walked by FastAPI's encoder and validated
    against the annotation again, in one more worker thread)."""
    query = parse_query(schema=schema, refs={}, **params)
    return JSONResponse(run_plain(query, items))
