"""Protect a group (`snapgroup protect` / `unprotect`): a protected group is never
pruned by a policy, and a plain delete of it (or of one of its snapshots) is refused
until it is unprotected. Set under the VM's lock, so it never crosses a delete."""

from __future__ import annotations

from snapgroup.domain.inventory import Group
from snapgroup.domain.validate import parse_uuid
from snapgroup.ops.context import OpContext
from snapgroup.ops.group_views import load_groups
from snapgroup.store.policy_repo import PolicyRepo
from snapgroup.store.repo import Repo


def protect(ctx: OpContext, group_uuid: str, *, protected: bool = True) -> Group:
    uuid = parse_uuid(group_uuid, "group uuid")
    row = ctx.owned_group(uuid)
    with ctx.locks.vm(row.vm_uuid, wait=ctx.lock_wait), ctx.db.transaction() as session:
        PolicyRepo(session).set_protected(uuid, protected)
        return load_groups(Repo(session), [uuid])[0]
