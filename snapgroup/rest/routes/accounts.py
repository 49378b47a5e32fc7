"""/accounts/...: ZStack's login, logout and session check (no session needed)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from snapgroup.domain.errors import InvalidSession
from snapgroup.rest.routes.common import documented
from snapgroup.rest.schemas import LoginRequest, SessionDocument, ValidSessionDocument
from snapgroup.rest.services import Services, services

router = APIRouter(tags=["accounts"])
ServicesDep = Annotated[Services, Depends(services)]


@router.put(
    "/accounts/login",
    responses=documented(200, SessionDocument, 400, 401),
    summary="LogInByAccount",
)
def login(body: LoginRequest, svc: ServicesDep) -> dict[str, Any]:
    """`password` is the SHA-512 hex digest of the password, as ZStack clients send it."""
    params = body.logInByAccount
    session = svc.accounts.login(params.accountName, params.password)
    return {"inventory": session.to_inventory()}


@router.delete("/accounts/sessions/{uuid}", summary="LogOut")
def logout(uuid: str, svc: ServicesDep) -> dict[str, Any]:
    svc.accounts.logout(uuid)
    return {}


@router.get(
    "/accounts/sessions/{uuid}/valid",
    responses=documented(200, ValidSessionDocument),
    summary="ValidateSession",
)
def validate_session(uuid: str, svc: ServicesDep) -> dict[str, Any]:
    try:
        svc.accounts.validate(uuid)
    except InvalidSession:
        return {"validSession": False}
    return {"validSession": True}
