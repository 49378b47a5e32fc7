"""Snapshot policies over REST. Our own paths (`/snapgroup/policies`: create or
replace, list, show, remove; `/snapgroup/policy-status`) carry everything a policy is.
ZStack's scheduler API is served where it maps: CreateSchedulerJob of type
`volumeSnapshotGroup` on a root volume with `parameters.snapshotGroupMaxNumber` N
becomes a policy on that VM keeping N groups (one an hour: ZStack keeps the N newest its
job took; the hourly slot is the closest fixed period), QuerySchedulerJob lists those
and DeleteSchedulerJob removes one (its groups stay). A simple trigger whose interval is a slot's
(CreateSchedulerTrigger: 3600 s hourly, 86400 daily, 604800 weekly, minutes dividing a
day frequent) moves the jobs added to it (AddSchedulerJobToSchedulerTrigger) to that
slot; a cron trigger or another interval cannot be a slot and is refused (400).
Policy changes are metadata only: they answer at once (200), as GetVersion does."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field

from snapgroup.domain.errors import InvalidArgument, NotFound
from snapgroup.domain.inventory import zstack_date
from snapgroup.domain.retention import CONSISTENCIES, Policy, Retention
from snapgroup.ops.policies import record_json
from snapgroup.rest.routes.common import AUTH, documented
from snapgroup.rest.schemas import UUID_PATTERN
from snapgroup.rest.services import Services, services
from snapgroup.store.policy_repo import PolicyRecord, PolicyRepo
from snapgroup.store.policy_tables import SchedulerTriggerRow
from snapgroup.store.repo import Repo

router = APIRouter(tags=["snapshot policies"], dependencies=[AUTH])
ServicesDep = Annotated[Services, Depends(services)]
POLICY_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
JOB_TYPE = "volumeSnapshotGroup"  # ZStack's SchedulerType.VOLUME_SNAPSHOT_GROUP
MAX_KEY = "snapshotGroupMaxNumber"  # ZStack's SchedulerJobParameters.snapshotGroupMax
JOB_PREFIX = "zstack-job-"


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class PolicyParams(_Request):
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
    minFreePercent: float | None = Field(None, ge=0, lt=100)
    exportTo: str | None = Field(None, max_length=4096)
    exportKeep: int | None = Field(None, ge=1, le=100_000)


class NamedPolicyParams(PolicyParams):
    name: str = Field(pattern=POLICY_NAME)


class CreatePolicyRequest(_Request):
    params: NamedPolicyParams


class SetPolicyRequest(_Request):
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
    minFreePercent: float | None = None
    exportTo: str | None = None
    exportKeep: int | None = None
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
    )


def _set(svc: Services, name: str, p: PolicyParams) -> dict[str, Any]:
    record, _new = svc.engine.set_policy(
        _policy(name, p), export_to=p.exportTo, export_keep=p.exportKeep
    )
    return {"inventory": record_json(record)}


@router.post(
    "/snapgroup/policies",
    responses=documented(200, PolicyDocument, 400, 401),
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
    responses=documented(200, PolicyDocument, 400, 401),
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


# -- ZStack's scheduler jobs of type volumeSnapshotGroup ------------------------------


class _ZStackParams(_Request):
    """What every ZStack APICreate*Msg here takes first."""

    name: str = Field(min_length=1, max_length=255)
    description: str | None = Field(None, max_length=2048)


class SchedulerJobParams(_ZStackParams):
    targetResourceUuid: str = Field(pattern=UUID_PATTERN, description="the VM's root volume")
    type: str = Field(description=f"only `{JOB_TYPE}` is served")
    parameters: dict[str, Any] | None = Field(
        None, description=f"`{MAX_KEY}`: the groups kept (ZStack sends it as a string)"
    )
    resourceUuid: str | None = Field(None, pattern=UUID_PATTERN)


class CreateSchedulerJobRequest(_Request):
    params: SchedulerJobParams
    systemTags: list[str] | None = None
    userTags: list[str] | None = None


class SchedulerJobInventory(BaseModel):
    model_config = ConfigDict(extra="allow")
    uuid: str
    targetResourceUuid: str | None = None
    name: str
    description: str | None = None
    state: str
    createDate: str
    lastOpDate: str
    triggersUuid: list[str]


class SchedulerJobDocument(BaseModel):
    inventory: SchedulerJobInventory


class SchedulerJobListDocument(BaseModel):
    inventories: list[SchedulerJobInventory]


def _plain(uuid: str) -> str:
    """A UUID as the store keeps it: 32 hex digits, lower case, no dashes."""
    return uuid.replace("-", "").lower()


def _job_record(svc: Services, job_uuid: str) -> PolicyRecord:
    wanted = _plain(job_uuid)
    record = next((r for r in _jobs(svc) if r.policy.name == JOB_PREFIX + wanted), None)
    if record is None:
        raise NotFound(f"no scheduler job {job_uuid}")
    return record


def _max_kept(parameters: dict[str, Any] | None) -> int:
    raw = (parameters or {}).get(MAX_KEY)
    try:
        kept = int(str(raw))
    except ValueError:
        raise InvalidArgument(f"parameters.{MAX_KEY}: a whole number, not {raw!r}") from None
    if not 1 <= kept <= 100_000:
        raise InvalidArgument(f"parameters.{MAX_KEY}: 1 to 100000, not {kept}")
    return kept


def _root_volume(svc: Services, vm_uuid: str) -> str | None:
    with svc.engine.db.transaction() as session:
        rows = Repo(session).volumes_of_vm(vm_uuid)
    return next((v.uuid for v in rows if v.volume_type == "Root"), None)


def _kept(record: PolicyRecord) -> int:
    """A job's policy keeps one label: its count is the job's maximum."""
    return max(record.policy.retention.counts.values(), default=0)


def _job(
    svc: Services, record: PolicyRecord, triggers: list[SchedulerTriggerRow]
) -> dict[str, Any]:
    vms = record.policy.vms or ()
    uuid = record.policy.name.removeprefix(JOB_PREFIX)  # the job's own uuid
    kept = _kept(record)
    return {
        "uuid": uuid,
        "targetResourceUuid": _root_volume(svc, vms[0]) if vms else None,
        "name": record.policy.name,
        "description": f"snapgroup policy {record.policy.name}: keeps {kept} groups, "
        + ", ".join(str(k) for k in record.policy.retention.counts),
        "state": "Enabled",
        "jobType": JOB_TYPE,
        "jobData": {MAX_KEY: str(kept)},
        "createDate": zstack_date(record.create_date),
        "lastOpDate": zstack_date(record.last_op_date),
        "triggersUuid": [t.uuid for t in triggers if uuid in json.loads(t.jobs)],
    }


def _triggers(svc: Services) -> list[SchedulerTriggerRow]:
    with svc.engine.db.transaction() as session:
        return PolicyRepo(session).triggers()


def _jobs(svc: Services) -> list[PolicyRecord]:
    return [r for r in svc.engine.policies() if r.policy.name.startswith(JOB_PREFIX)]


@router.post(
    "/scheduler/jobs",
    responses=documented(200, SchedulerJobDocument, 400, 401, 404),
    summary="CreateSchedulerJob (type volumeSnapshotGroup): a policy on the root volume's VM",
)
def create_scheduler_job(body: CreateSchedulerJobRequest, svc: ServicesDep) -> dict[str, Any]:
    p = body.params
    if p.type != JOB_TYPE:
        raise InvalidArgument(f"scheduler job type {p.type!r}: only {JOB_TYPE!r} is served here")
    kept = _max_kept(p.parameters)
    volume = _plain(p.targetResourceUuid)
    with svc.engine.db.transaction() as session:
        row = Repo(session).volume(volume)
    if row is None or row.volume_type != "Root":
        raise NotFound(f"no root volume {p.targetResourceUuid} recorded")
    job_uuid = _plain(p.resourceUuid or svc.engine.new_uuid())
    policy = Policy(f"{JOB_PREFIX}{job_uuid}", Retention(hourly=kept), vms=(row.vm_uuid,))
    record, _new = svc.engine.set_policy(policy)
    return {"inventory": _job(svc, record, [])}


@router.get(
    "/scheduler/jobs",
    responses=documented(200, SchedulerJobListDocument, 401),
    summary="QuerySchedulerJob: the snapshot-group jobs (policies made by CreateSchedulerJob)",
)
def query_scheduler_jobs(svc: ServicesDep) -> dict[str, Any]:
    triggers = _triggers(svc)
    return {"inventories": [_job(svc, r, triggers) for r in _jobs(svc)]}


@router.delete(
    "/scheduler/jobs/{uuid}",
    responses=documented(200, EmptyDocument, 400, 401, 404),
    summary="DeleteSchedulerJob: its policy goes, the groups it took stay",
)
def delete_scheduler_job(
    uuid: Annotated[str, Path(pattern=UUID_PATTERN)], svc: ServicesDep
) -> dict[str, Any]:
    svc.engine.remove_policy(_job_record(svc, uuid).policy.name)
    return {}


# -- ZStack's scheduler triggers: a schedule the jobs added to it take their slot from --

FIXED = {3600: "hourly", 86400: "daily", 604800: "weekly"}


def slot_of(interval: int) -> tuple[str, int]:
    """(label, every) of the policy slot a simple trigger's interval (seconds) is."""
    if interval in FIXED:
        return FIXED[interval], 15
    minutes, rest = divmod(interval, 60)
    if rest == 0 and 0 < minutes < 1440 and 1440 % minutes == 0:
        return "frequent", minutes
    raise InvalidArgument(
        f"schedulerInterval {interval} s is no policy slot: 3600, 86400, 604800, or "
        "minutes that divide a day (e.g. 900); for anything else use /snapgroup/policies"
    )


class SchedulerTriggerParams(_ZStackParams):
    schedulerInterval: int | None = Field(None, ge=1, le=2_147_483_647)
    repeatCount: int | None = Field(None, ge=1, le=2_147_483_647)
    startTime: int | None = Field(None, ge=0, description="ms since the epoch")
    schedulerType: str = Field(pattern="^(simple|cron)$")
    cron: str | None = None
    resourceUuid: str | None = Field(None, pattern=UUID_PATTERN)


class CreateSchedulerTriggerRequest(_Request):
    params: SchedulerTriggerParams
    systemTags: list[str] | None = None
    userTags: list[str] | None = None


class SchedulerTriggerInventory(BaseModel):
    model_config = ConfigDict(extra="allow")
    uuid: str
    name: str
    description: str | None = None
    schedulerType: str
    schedulerInterval: int | None = None
    repeatCount: int | None = None
    startTime: str | None = None
    stopTime: str | None = None
    createDate: str
    lastOpDate: str


class SchedulerTriggerDocument(BaseModel):
    inventory: SchedulerTriggerInventory


class SchedulerTriggerListDocument(BaseModel):
    inventories: list[SchedulerTriggerInventory]


def _trigger(row: SchedulerTriggerRow) -> dict[str, Any]:
    return {
        "uuid": row.uuid,
        "name": row.name,
        "description": row.description,
        "schedulerType": row.scheduler_type,
        "schedulerInterval": row.interval,
        "repeatCount": row.repeat_count,
        "startTime": zstack_date(row.start_time) if row.start_time else None,
        "stopTime": None,
        "jobsUuid": json.loads(row.jobs),
        "createDate": zstack_date(row.create_date),
        "lastOpDate": zstack_date(row.last_op_date),
    }


@router.post(
    "/scheduler/triggers",
    responses=documented(200, SchedulerTriggerDocument, 400, 401),
    summary="CreateSchedulerTrigger (simple, a slot's interval)",
)
def create_scheduler_trigger(
    body: CreateSchedulerTriggerRequest, svc: ServicesDep
) -> dict[str, Any]:
    p = body.params
    if p.schedulerType != "simple" or p.schedulerInterval is None:
        raise InvalidArgument(
            "only simple triggers with a schedulerInterval are served: a policy's slots "
            "are fixed UTC periods (use /snapgroup/policies for the rest)"
        )
    slot_of(p.schedulerInterval)  # refused now, not when a job is added
    now = svc.engine.clock()
    uuid = _plain(p.resourceUuid or svc.engine.new_uuid())
    start = None if p.startTime is None else datetime.fromtimestamp(p.startTime / 1000, UTC)
    with svc.engine.db.transaction() as session:
        repo = PolicyRepo(session)
        if repo.trigger(uuid) is not None:
            raise InvalidArgument(f"resourceUuid {uuid} is already a trigger's")
        repo.insert_trigger(
            {
                "uuid": uuid,
                "name": p.name,
                "description": p.description,
                "scheduler_type": p.schedulerType,
                "interval": p.schedulerInterval,
                "repeat_count": p.repeatCount,
                "start_time": start,
                "jobs": "[]",
                "create_date": now,
                "last_op_date": now,
            }
        )
        row = repo.trigger(uuid)
        assert row is not None
        return {"inventory": _trigger(row)}


@router.get(
    "/scheduler/triggers",
    responses=documented(200, SchedulerTriggerListDocument, 401),
    summary="QuerySchedulerTrigger",
)
def query_scheduler_triggers(svc: ServicesDep) -> dict[str, Any]:
    return {"inventories": [_trigger(t) for t in _triggers(svc)]}


@router.delete(
    "/scheduler/triggers/{uuid}",
    responses=documented(200, EmptyDocument, 400, 401, 404),
    summary="DeleteSchedulerTrigger: its jobs keep the slot they have",
)
def delete_scheduler_trigger(
    uuid: Annotated[str, Path(pattern=UUID_PATTERN)], svc: ServicesDep
) -> dict[str, Any]:
    with svc.engine.db.transaction() as session:
        PolicyRepo(session).remove_trigger(_plain(uuid))
    return {}


@router.post(
    "/scheduler/jobs/{job_uuid}/scheduler/triggers/{trigger_uuid}",
    responses=documented(200, EmptyDocument, 400, 401, 404),
    summary="AddSchedulerJobToSchedulerTrigger: the job's policy takes the trigger's slot",
)
def add_job_to_trigger(
    job_uuid: Annotated[str, Path(pattern=UUID_PATTERN)],
    trigger_uuid: Annotated[str, Path(pattern=UUID_PATTERN)],
    svc: ServicesDep,
) -> dict[str, Any]:
    job = _plain(job_uuid)
    trigger = _plain(trigger_uuid)
    record = _job_record(svc, job_uuid)
    with svc.engine.db.transaction() as session:
        row = PolicyRepo(session).trigger(trigger)
    if row is None or row.interval is None:
        raise NotFound(f"no scheduler trigger {trigger_uuid}")
    label, every = slot_of(row.interval)
    policy = record.policy
    retention = Retention(**{label: _kept(record)}, every=every)
    svc.engine.set_policy(Policy(policy.name, retention, vms=policy.vms))
    with svc.engine.db.transaction() as session:
        repo = PolicyRepo(session)
        current = repo.trigger(trigger)
        if current is not None:
            jobs = [j for j in json.loads(current.jobs) if j != job] + [job]
            repo.set_trigger_jobs(trigger, jobs, now=svc.engine.clock())
    return {}
