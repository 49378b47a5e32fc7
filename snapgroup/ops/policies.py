"""Snapshot policies (`snapgroup policy set|list|show|remove|status`): stored in the
store (store/policy_repo.py), each change one transaction; status per VM and slot."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from snapgroup.domain.errors import InvalidArgument
from snapgroup.domain.retention import (
    CRIT,
    OK,
    WARN,
    AutoGroup,
    Policy,
    SlotStatus,
    utc,
    vm_status,
)
from snapgroup.ops.autosnap_port import EnginePort
from snapgroup.ops.context import OpContext
from snapgroup.store.policy_repo import PolicyRecord, PolicyRepo


def set_policy(
    ctx: OpContext,
    policy: Policy,
    *,
    export_to: str | None = None,
    export_keep: int | None = None,
    export_compress: bool = False,
) -> tuple[PolicyRecord, bool]:
    """Create or replace the policy of that name; (its record, whether it is new).
    `export_to`/`export_keep`/`export_compress` are stored for the export pass."""
    if export_to is not None and not os.path.isabs(export_to):
        raise InvalidArgument(f"--export-to {export_to!r}: an absolute path")
    with ctx.db.transaction() as session:
        return PolicyRepo(session).put(
            policy,
            now=ctx.clock(),
            new_uuid=ctx.new_uuid,
            export_to=export_to,
            export_keep=export_keep,
            export_compress=export_compress,
        )


def list_policies(ctx: OpContext) -> list[PolicyRecord]:
    with ctx.db.transaction() as session:
        return PolicyRepo(session).all()


def get_policy(ctx: OpContext, name: str) -> PolicyRecord:
    with ctx.db.transaction() as session:
        return PolicyRepo(session).get(name)


def remove_policy(ctx: OpContext, name: str) -> None:
    """The policy goes; the groups it took stay (never pruned again)."""
    with ctx.db.transaction() as session:
        PolicyRepo(session).remove(name)


def record_json(record: PolicyRecord) -> dict[str, Any]:
    p, r = record.policy, record.policy.retention
    return {
        "uuid": record.uuid,
        "name": p.name,
        "vms": None if p.vms is None else list(p.vms),
        "all": p.vms is None,
        "exclude": list(p.exclude),
        "frequent": r.frequent,
        "every": r.every,
        "hourly": r.hourly,
        "daily": r.daily,
        "weekly": r.weekly,
        "monthly": r.monthly,
        "consistency": p.consistency,
        "withMemory": p.with_memory,
        "minFreePercent": p.min_free_percent,
        "exportTo": record.export_to,
        "exportKeep": record.export_keep,
        "exportCompress": record.export_compress,
        "createDate": utc(record.create_date).isoformat(),
        "lastOpDate": utc(record.last_op_date).isoformat(),
    }


@dataclass(frozen=True)
class VmPolicyStatus:
    vm_uuid: str
    vm_name: str
    policies: tuple[str, ...]
    slots: tuple[SlotStatus, ...]
    error: str | None = None  # a VM a policy names that this host lacks

    @property
    def state(self) -> str:
        if self.error:
            return CRIT
        worst = max((s.exit_code for s in self.slots), default=0)
        return (OK, WARN, CRIT)[worst]

    def to_json(self) -> dict[str, Any]:
        return {
            "vm": {"uuid": self.vm_uuid, "name": self.vm_name},
            "policies": list(self.policies),
            "state": self.state,
            "error": self.error,
            "slots": [
                {
                    "slot": str(s.kind),
                    "newest": s.newest.isoformat() if s.newest else None,
                    "ageSeconds": None if s.age is None else int(s.age.total_seconds()),
                    "state": s.state,
                }
                for s in self.slots
            ],
        }


@dataclass(frozen=True)
class PolicyStatus:
    now: datetime
    vms: tuple[VmPolicyStatus, ...]

    @property
    def state(self) -> str:
        codes = [(OK, WARN, CRIT).index(v.state) for v in self.vms]
        return (OK, WARN, CRIT)[max(codes, default=0)]

    @property
    def exit_status(self) -> int:
        """Nagios: 0 OK, 1 WARN, 2 CRIT."""
        return (OK, WARN, CRIT).index(self.state)

    def to_json(self) -> dict[str, Any]:
        return {
            "now": utc(self.now).isoformat(),
            "state": self.state,
            "vms": [v.to_json() for v in self.vms],
        }


def policy_status(ctx: OpContext, *, now: datetime | None = None) -> PolicyStatus:
    """Per VM under a policy and per slot kind: the newest policy group's age, OK /
    WARN (past 1.5 periods) / CRIT (past 2, or none)."""
    now = now or ctx.clock()
    policies = [r.policy for r in list_policies(ctx)]
    port = EnginePort(ctx, policies)
    out: list[VmPolicyStatus] = []
    known = list(port.vms())
    for vm in known:
        mine = [p for p in policies if p.covers(vm.uuid, vm.name)]
        if not mine:
            continue
        groups: Sequence[AutoGroup] = port.groups(vm)
        slots = tuple(vm_status(now, mine, groups))
        out.append(VmPolicyStatus(vm.uuid, vm.name, tuple(p.name for p in mine), slots))
    ids = {i for vm in known for i in (vm.uuid, vm.name)}
    for p in policies:
        for missing in (v for v in p.vms or () if v not in ids):
            why = f"policy {p.name}: no VM named {missing!r} on this host"
            out.append(VmPolicyStatus("", missing, (p.name,), (), why))
    return PolicyStatus(now, tuple(out))
