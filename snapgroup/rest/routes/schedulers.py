"""ZStack's scheduler API, served where it maps onto snapshot policies (policies.py):
CreateSchedulerJob of type `volumeSnapshotGroup` on a root volume with
`parameters.snapshotGroupMaxNumber` N becomes a policy on that VM keeping N groups (one
an hour: ZStack keeps the N newest its job took; the hourly slot is the closest fixed
period), QuerySchedulerJob lists those and DeleteSchedulerJob removes one (its groups
stay). A simple trigger whose interval is a slot's (CreateSchedulerTrigger: 3600 s
hourly, 86400 daily, 604800 weekly, minutes dividing a day frequent) moves the jobs
added to it (AddSchedulerJobToSchedulerTrigger) to that slot; a cron trigger or another
interval cannot be a slot and is refused (400)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field

from snapgroup.domain.errors import InvalidArgument, NotFound
from snapgroup.domain.inventory import zstack_date
from snapgroup.domain.retention import Policy, Retention
from snapgroup.rest.routes.common import AUTH, documented
from snapgroup.rest.routes.policies import EmptyDocument
from snapgroup.rest.schemas import UUID_PATTERN, StrictBody
from snapgroup.rest.services import Services, services
from snapgroup.store.policy_repo import PolicyRecord, PolicyRepo
from snapgroup.store.policy_tables import SchedulerTriggerRow
from snapgroup.store.repo import Repo

router = APIRouter(tags=["snapshot policies"], dependencies=[AUTH])
ServicesDep = Annotated[Services, Depends(services)]
JOB_TYPE = "volumeSnapshotGroup"  # ZStack's SchedulerType.VOLUME_SNAPSHOT_GROUP
MAX_KEY = "snapshotGroupMaxNumber"  # ZStack's SchedulerJobParameters.snapshotGroupMax
JOB_PREFIX = "zstack-job-"


# -- scheduler jobs of type volumeSnapshotGroup ------------------------------


class _ZStackParams(StrictBody):
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


class CreateSchedulerJobRequest(StrictBody):
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


class CreateSchedulerTriggerRequest(StrictBody):
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
