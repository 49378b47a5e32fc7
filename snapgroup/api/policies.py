"""Engine's methods on protection and snapshot policies (ops/protect.py,
ops/policies.py), and the policy pass (ops/autosnap.py)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snapgroup.domain.inventory import Group
    from snapgroup.domain.retention import Policy
    from snapgroup.ops import autosnap as autosnap_ops
    from snapgroup.ops import policies as policy_ops
    from snapgroup.ops.autosnap_port import ExportFn
    from snapgroup.ops.context import OpContext
    from snapgroup.store.policy_repo import PolicyRecord


class Policies:
    """Protection, snapshot policies and their pass."""

    ctx: OpContext
    # The export of a group a policy just took (EnginePort.export; issue 15).
    policy_export: ExportFn | None = None

    def protect(self, group_uuid: str, *, protected: bool = True) -> Group:
        """A protected group is never pruned; a plain delete of it is refused."""
        from snapgroup.ops import protect

        return protect.protect(self.ctx, group_uuid, protected=protected)

    def set_policy(
        self,
        policy: Policy,
        *,
        export_to: str | None = None,
        export_keep: int | None = None,
        export_compress: bool = False,
    ) -> tuple[PolicyRecord, bool]:
        from snapgroup.ops import policies as policy_ops

        return policy_ops.set_policy(
            self.ctx,
            policy,
            export_to=export_to,
            export_keep=export_keep,
            export_compress=export_compress,
        )

    def policies(self) -> list[PolicyRecord]:
        from snapgroup.ops import policies as policy_ops

        return policy_ops.list_policies(self.ctx)

    def policy(self, name: str) -> PolicyRecord:
        from snapgroup.ops import policies as policy_ops

        return policy_ops.get_policy(self.ctx, name)

    def remove_policy(self, name: str) -> None:
        from snapgroup.ops import policies as policy_ops

        policy_ops.remove_policy(self.ctx, name)

    def policy_status(self, *, now: datetime | None = None) -> policy_ops.PolicyStatus:
        from snapgroup.ops import policies as policy_ops

        return policy_ops.policy_status(self.ctx, now=now)

    def autosnap(
        self,
        *,
        dry_run: bool = False,
        parallel: int | None = None,
        wait: float | None = None,
        now: datetime | None = None,
    ) -> autosnap_ops.PassReport:
        """One policy pass. `parallel`: VMs at once (default autosnap_ops.DEFAULT_PARALLEL);
        `wait`: seconds a busy VM is waited for, per operation (default the engine's
        lock wait, else autosnap_ops.DEFAULT_WAIT)."""
        from snapgroup.ops import autosnap as autosnap_ops
        from snapgroup.ops import delete
        from snapgroup.ops import policies as policy_ops
        from snapgroup.ops.autosnap_port import EnginePort

        def delete_or_raise(ctx: OpContext, group_uuid: str) -> None:
            report = delete.delete(ctx, group_uuid)
            if report.error is not None:
                raise report.error

        records = policy_ops.list_policies(self.ctx)
        port = EnginePort(
            self.ctx,
            [r.policy for r in records],
            records=records,
            delete=delete_or_raise,
            plan_delete=lambda ctx, uuid: delete.plan(ctx, uuid).to_json(),
            export=self.policy_export,
        )
        return autosnap_ops.autosnap(
            port,
            [r.policy for r in records],
            now=now or self.ctx.clock(),
            dry_run=dry_run,
            parallel=autosnap_ops.DEFAULT_PARALLEL if parallel is None else parallel,
            wait=(self.ctx.lock_wait or autosnap_ops.DEFAULT_WAIT) if wait is None else wait,
        )
