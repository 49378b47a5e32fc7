"""Engine's instant recoveries (ops/instant.py over ops/restore.py and ops/clone.py):
a new VM running at once on thin overlays, its disks copied local in the background."""

from __future__ import annotations

from typing import TYPE_CHECKING

from snapgroup.domain.errors import InvalidArgument

if TYPE_CHECKING:
    from snapgroup.ops.clone import Clone
    from snapgroup.ops.context import OpContext
    from snapgroup.ops.instant import Copying
    from snapgroup.ops.restore import Restored
    from snapgroup.ports import ProgressFn


class Instant:
    """restore --instant, clone --instant."""

    ctx: OpContext

    def instant_restore(
        self,
        backup_id: str,
        *,
        source: str,
        as_vm: str,
        disk_dir: str | None = None,
        bandwidth: int | None = None,
        follow: bool = False,
        progress: ProgressFn | None = None,
    ) -> tuple[Restored, Copying]:
        """The backup as a new VM, started on thin overlays over the repository (a
        --keep-chain restore, which holds the backup), then each disk pulled local by
        QEMU; a memory group's backup resumed from its state (booted cold, said in the
        note, when the state cannot be). Before the start the chain is checked as far as
        its sizes and headers go;
        its checksums are read by the copy, which pauses the VM on a mismatch. Returns
        once the VM runs (with `follow`, once the copy is done too)."""
        from dataclasses import replace

        from snapgroup.ops import instant, restore

        if not as_vm:
            raise InvalidArgument("--instant needs --as NEW_VM")
        done = restore.restore(
            self.ctx,
            backup_id,
            source=source,
            as_vm=as_vm,
            disk_dir=disk_dir,
            keep_chain=True,
            check_data=False,
            resume=True,  # a memory group's backup runs on from its moment, as with --start
        )
        assert done.vm_uuid is not None
        copying = instant.start_copy(
            self.ctx,
            done.vm_uuid,
            done.files,
            repo=source,
            backup_id=done.backup_id,
            bandwidth=bandwidth,
            verify=True,
            start=not done.resumed,  # booted here, once the copy is journaled
        )
        done = replace(done, state=self.ctx.hv.lookup(done.vm_uuid).state.value)
        if follow:
            copying = instant.follow(self.ctx, copying, progress=progress)
        return done, copying

    def instant_follow(self, operation: str, *, progress: ProgressFn | None = None) -> None:
        """Drive an instant recovery's copy (journal operation `operation`) to its end:
        the CLI's background follower."""
        from snapgroup.ops import instant

        instant.follow_operation(self.ctx, operation, progress=progress)

    def instant_clone(
        self,
        group_uuid: str,
        *,
        name: str,
        bandwidth: int | None = None,
        follow: bool = False,
        progress: ProgressFn | None = None,
    ) -> tuple[Clone, Copying]:
        """A clone started at once on overlays over the group's snapshots, then each
        disk pulled local: afterwards it pins none of them (the group can be deleted)."""
        from snapgroup.ops import clone, instant

        made = clone.clone(self.ctx, group_uuid, name=name, start=True)
        copying = instant.start_copy(
            self.ctx,
            made.uuid,
            {d.target: d.install_path for d in made.disks},
            clone_volumes={d.target: d.volume_uuid for d in made.disks},
            bandwidth=bandwidth,
        )
        if follow:
            copying = instant.follow(self.ctx, copying, progress=progress)
        return made, copying
