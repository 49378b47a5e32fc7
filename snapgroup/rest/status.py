"""THE mapping from an error to an HTTP status, and the handlers that answer every
failure in the seed's error shape: `{"error": {code, description, details, ...}}`.

A request refused before any work: 400 invalid argument, 401 no valid session, 404 not
found, 409 busy or the wrong state. A job that failed answers 503, as ZStack does
(snapgroup.rest.jobs). 500 is a bug in snapgroup, never an expected answer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

from snapgroup.domain.errors import (
    AuthenticationError,
    Busy,
    FilesystemError,
    HypervisorUnavailable,
    InternalError,
    InvalidArgument,
    InvalidSession,
    NotFound,
    OperationError,
    SnapgroupError,
    SnapshotWrongStatus,
    StoreError,
    Timeout,
)

log = logging.getLogger(__name__)

_STATUS: dict[type[SnapgroupError], int] = {
    InvalidArgument: 400,
    AuthenticationError: 401,
    InvalidSession: 401,
    NotFound: 404,
    Busy: 409,
    OperationError: 409,
    SnapshotWrongStatus: 409,
    FilesystemError: 422,  # the guest's filesystem cannot be read (damaged, not one)
    StoreError: 503,
    HypervisorUnavailable: 503,
    Timeout: 503,
}
FAILED_JOB = 503  # ZStack's status for an API whose work failed
DEFAULT_STATUS = 503  # any other error of the family: the work could not be done


def http_status(error: SnapgroupError) -> int:
    for kind in type(error).__mro__:
        if kind in _STATUS:
            return _STATUS[kind]
    return DEFAULT_STATUS


def error_response(error: SnapgroupError, status: int | None = None) -> JSONResponse:
    headers = {"WWW-Authenticate": "OAuth"} if isinstance(error, InvalidSession) else None
    return JSONResponse(
        {"error": error.to_dict()}, status_code=status or http_status(error), headers=headers
    )


def _validation_details(errors: Sequence[Any]) -> str:
    """Where and what, never the input itself (it may be huge, or a password)."""
    parts = []
    for e in errors[:10]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)


_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> str:
    """Every method the path answers (Starlette's Allow names only the first matching
    route's, and a path here may have several: POST and GET on .../group)."""
    allowed = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(r.matches(scope)[0] is Match.FULL for r in request.app.router.routes):
            allowed.append(method)
    return ", ".join(allowed)


def install(app: FastAPI) -> None:
    async def snapgroup_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, SnapgroupError)
        return error_response(exc)

    async def invalid_request(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(InvalidArgument(_validation_details(exc.errors())), 400)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        error: SnapgroupError
        if exc.status_code == 404:
            error = NotFound(f"no API at this path: {exc.detail}")
        else:
            error = InvalidArgument(str(exc.detail))
        response = error_response(error, exc.status_code)
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:
            response.headers["Allow"] = _allowed_methods(request)
        return response

    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error serving a request")
        return error_response(InternalError(f"{type(exc).__name__}: {exc}"), 500)

    app.add_exception_handler(SnapgroupError, snapgroup_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
