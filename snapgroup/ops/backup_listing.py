"""A backup repository opened and listed with nothing else: `snapgroup backups` reads
manifests, so it needs neither libvirt nor the store (nor their imports: SQLAlchemy's
alone is ~10 times a listing's whole time). Shared by the engine's scan_backups
(ops/export.py), the API's scan_repository (api/backups.py) and the CLI's listing with
or without the engine (cli/backups.py, cli/quick_backups.py). Imports nothing but the
errors at run time (not even typing's module: a listing's start-up is measured)."""

from __future__ import annotations

from snapgroup.domain.errors import InvalidArgument, NotFound

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    from snapgroup.domain.backup_manifest import BackupManifest, DamagedBackup
    from snapgroup.ports import BackupReader

    Repo = TypeVar("Repo", bound=BackupReader)


def repository(
    factory: Callable[[str], Repo] | None, directory: str, *, existing: bool = True
) -> Repo:
    """The repository at `directory`; one that is not there is NotFound unless this is
    an export (which makes it) or a recovery (which finds nothing to finish there)."""
    if factory is None:
        raise InvalidArgument("this engine has no backup repository support")
    if not directory:
        raise InvalidArgument("a backup repository directory is needed")
    store = factory(directory)
    if existing and not store.exists(store.root):
        raise NotFound(f"no backup repository at {store.root}")
    return store


def scan(
    factory: Callable[[str], BackupReader] | None, at: str, vm: str | None = None
) -> tuple[list[BackupManifest], list[DamagedBackup]]:
    """The repository's complete backups, oldest first, and the backup directories whose
    manifest is unreadable or gone (not listed), in one read of the manifests; of one VM
    (its name or UUID; NotFound when it has no readable backup there)."""
    listed, damaged = repository(factory, at).scan()
    if vm is None:
        return listed, damaged
    uuids = vm_uuids(listed, vm)
    return [m for m in listed if m.vm_uuid in uuids], [d for d in damaged if d.vm_uuid in uuids]


def vm_uuids(every: list[BackupManifest], vm: str) -> set[str]:
    """The VM's UUID among the backups' (vm: its UUID, or its name when one VM has it)."""
    key = vm.replace("-", "").lower()
    uuids = {m.vm_uuid for m in every if m.vm_uuid == key} or {
        m.vm_uuid for m in every if m.vm_name == vm
    }
    if not uuids:
        raise NotFound(f"no backup of VM {vm!r} in the repository")
    if len(uuids) > 1:
        raise InvalidArgument(f"VM name {vm!r} names several VMs' backups: give the UUID")
    return uuids
