"""Snapshot policies over REST, under our own paths (`/snapgroup/policies`: create or
replace, list, show, remove; `/snapgroup/policy-status`): everything a policy is.
ZStack's scheduler API over the same policies is schedulers.py. Policy changes are
metadata only: they answer at once (200), as GetVersion does."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field

from snapgroup.domain.errors import InvalidArgument
from snapgroup.domain.retention import CONSISTENCIES, Policy, Retention
from snapgroup.domain.validate import SHORT_NAME_PATTERN
from snapgroup.ops.policies import record_json
from snapgroup.rest.routes.common import AUTH, documented
from snapgroup.rest.schemas import StrictBody
from snapgroup.rest.services import Services, services

router = APIRouter(tags=["snapshot policies"], dependencies=[AUTH])
ServicesDep = Annotated[Services, Depends(services)]
POLICY_NAME = SHORT_NAME_PATTERN


class PolicyParams(StrictBody):
    vms: list[str] | None = Field(None, description="VM names or UUIDs; omitted: `all`")
    all: bool = False
    exclude: list[str] = Field(default_factory=list, description="with `all`")
    frequent: int = Field(0, ge=0, le=100_000)
    every: int = Field(15, ge=1, le=1440, description="minutes between frequent groups")
    hourly: int = Field(0, ge=0, le=100_000)
    daily: int = Field(0, ge=0, le=100_000)
    weekly: int = Field(0, ge=0, le=100_000)
    monthly: int = Field(0, ge=0, le=100_000)
    consistency: str = Field("auto", pattern="^(" + "|".join(CONSISTENCIES) + ")$")
    withMemory: bool = Field(False, description="memory groups (the running state too)")
    minFreePercent: float | None = Field(None, ge=0, lt=100)
    exportTo: str | None = Field(
        None, max_length=4096, description="a backup repository this server serves: its name"
    )
    exportKeep: int | None = Field(None, ge=1, le=100_000)
    exportCompress: bool = False


class NamedPolicyParams(PolicyParams):
    name: str = Field(pattern=POLICY_NAME)


class CreatePolicyRequest(StrictBody):
    params: NamedPolicyParams


class SetPolicyRequest(StrictBody):
    params: PolicyParams


class PolicyInventory(BaseModel):
    model_config = ConfigDict(extra="allow")
    uuid: str
    name: str
    vms: list[str] | None = None
    all: bool
    exclude: list[str]
    frequent: int
    every: int
    hourly: int
    daily: int
    weekly: int
    monthly: int
    consistency: str
    withMemory: bool = False
    minFreePercent: float | None = None
    exportTo: str | None = None
    exportKeep: int | None = None
    exportCompress: bool = False
    createDate: str
    lastOpDate: str


class PolicyDocument(BaseModel):
    inventory: PolicyInventory


class PolicyListDocument(BaseModel):
    inventories: list[PolicyInventory]


class SlotState(BaseModel):
    slot: str = Field(description="frequent/<N>m, hourly, daily, weekly or monthly")
    newest: str | None = Field(description="the newest policy group's time (UTC, ISO 8601)")
    ageSeconds: int | None = None
    state: str = Field(description="OK, WARN (past 1.5 periods) or CRIT (past 2, or none)")


class VmRefDocument(BaseModel):
    uuid: str
    name: str


class VmStatus(BaseModel):
    vm: VmRefDocument
    policies: list[str]
    state: str
    error: str | None = None
    slots: list[SlotState]


class StatusDocument(BaseModel):
    now: str
    state: str = Field(description="the worst of every VM's: OK, WARN or CRIT")
    vms: list[VmStatus]


class EmptyDocument(BaseModel):
    model_config = ConfigDict(extra="allow")


def _policy(name: str, p: PolicyParams) -> Policy:
    if p.all and p.vms is not None:
        raise InvalidArgument("give `vms` or `all`, not both")
    if not p.all and p.vms is None:
        raise InvalidArgument("give `vms` (names or UUIDs) or `all`: true")
    return Policy(
        name=name,
        retention=Retention(
            frequent=p.frequent,
            hourly=p.hourly,
            daily=p.daily,
            weekly=p.weekly,
            monthly=p.monthly,
            every=p.every,
        ),
        vms=None if p.all else tuple(p.vms or ()),
        exclude=tuple(p.exclude),
        consistency=p.consistency,
        min_free_percent=p.minFreePercent,
        with_memory=p.withMemory,
    )


def _set(svc: Services, name: str, p: PolicyParams) -> dict[str, Any]:
    policy = _policy(name, p)
    # A served repository only (by name or path): a client names no directory of its own.
    export_to = svc.repository(p.exportTo) if p.exportTo else None
    record, _new = svc.engine.set_policy(
        policy,
        export_to=export_to,
        export_keep=p.exportKeep,
        export_compress=p.exportCompress,
    )
    return {"inventory": record_json(record)}


@router.post(
    "/snapgroup/policies",
    responses=documented(200, PolicyDocument, 400, 401, 404),
    summary="Create or replace a snapshot policy (ours)",
)
def create_policy(body: CreatePolicyRequest, svc: ServicesDep) -> dict[str, Any]:
    return _set(svc, body.params.name, body.params)


@router.get(
    "/snapgroup/policies",
    responses=documented(200, PolicyListDocument, 401),
    summary="List the snapshot policies (ours)",
)
def list_policies(svc: ServicesDep) -> dict[str, Any]:
    return {"inventories": [record_json(r) for r in svc.engine.policies()]}


@router.get(
    "/snapgroup/policy-status",
    responses=documented(200, StatusDocument, 401),
    summary="Policy status per VM and slot: OK / WARN / CRIT (ours)",
)
def policy_status(svc: ServicesDep) -> dict[str, Any]:
    return svc.engine.policy_status().to_json()


@router.get(
    "/snapgroup/policies/{name}",
    responses=documented(200, PolicyDocument, 400, 401, 404),
    summary="One snapshot policy (ours)",
)
def get_policy(name: Annotated[str, Path(pattern=POLICY_NAME)], svc: ServicesDep) -> dict[str, Any]:
    return {"inventory": record_json(svc.engine.policy(name))}


@router.put(
    "/snapgroup/policies/{name}",
    responses=documented(200, PolicyDocument, 400, 401, 404),
    summary="Create or replace a snapshot policy by name (ours)",
)
def put_policy(
    name: Annotated[str, Path(pattern=POLICY_NAME)], body: SetPolicyRequest, svc: ServicesDep
) -> dict[str, Any]:
    return _set(svc, name, body.params)


@router.delete(
    "/snapgroup/policies/{name}",
    responses=documented(200, EmptyDocument, 400, 401, 404),
    summary="Remove a snapshot policy; the groups it took stay (ours)",
)
def delete_policy(
    name: Annotated[str, Path(pattern=POLICY_NAME)], svc: ServicesDep
) -> dict[str, Any]:
    svc.engine.remove_policy(name)
    return {}
