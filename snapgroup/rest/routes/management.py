"""ZStack's calls a client makes around the groups: GetVersion (no session) and
RenewSession. Both answer at once (200), which ZStack's SDKs accept as they do a
polled result."""

from __future__ import annotations

from importlib import metadata
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field

from snapgroup.rest.routes.common import AUTH, documented
from snapgroup.rest.schemas import UUID_PATTERN, SessionDocument
from snapgroup.rest.services import Services, services

router = APIRouter(tags=["management"])
ServicesDep = Annotated[Services, Depends(services)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")
    systemTags: list[str] | None = None
    userTags: list[str] | None = None


class GetVersionRequest(_Body):
    getVersion: dict[str, Any]


class VersionDocument(BaseModel):
    version: str = Field(description="snapgroup's version")


class RenewParams(BaseModel):
    model_config = ConfigDict(extra="ignore")
    duration: int | None = Field(
        None, ge=60, le=31_536_000, description="seconds from now (default: the timeout)"
    )


class RenewSessionRequest(_Body):
    renewSession: RenewParams


def version() -> str:
    try:
        return metadata.version("snapgroup")
    except metadata.PackageNotFoundError:  # run from a source tree
        return "0+unknown"


@router.put(
    "/management-nodes/actions",
    responses=documented(200, VersionDocument, 400),
    summary="GetVersion",
)
def get_version(body: GetVersionRequest) -> dict[str, Any]:
    """No session needed, as in ZStack."""
    return {"version": version()}


@router.put(
    "/accounts/sessions/{uuid}/renew",
    responses=documented(200, SessionDocument, 400, 401),
    summary="RenewSession",
    dependencies=[AUTH],
)
def renew_session(
    uuid: Annotated[str, Path(pattern=UUID_PATTERN)], body: RenewSessionRequest, svc: ServicesDep
) -> dict[str, Any]:
    session = svc.accounts.renew(uuid, body.renewSession.duration)  # 401 when not live
    return {"inventory": session.to_inventory()}
