"""A backup repository read, never written: where each backup is, which are listed,
their manifests read (through manifest_rules.parse_manifest, the one reader). What
BackupRepo (backup_repo.py) does besides reading, it adds to this: publishing, pruning,
holds, and the files' checksums (backup_files.py: hashlib, threads).

Standard library only (and the manifest's domain modules), so that `snapgroup backups`
lists a repository at about a bare interpreter's start-up (issue 20: cli/quick_backups.py
reads with this alone)."""

from __future__ import annotations

import os
import re

from snapgroup.domain.backup_manifest import MANIFEST, BackupManifest, DamagedBackup, disk_file
from snapgroup.domain.errors import InvalidArgument, NotFound, OperationError, SnapgroupError
from snapgroup.domain.manifest_rules import parse_manifest

TYPE_CHECKING = False  # not typing's: importing typing costs ~3 ms of start-up
if TYPE_CHECKING:
    from collections.abc import Iterator

UUID = re.compile(r"[0-9a-f]{32}")
PRUNE_PLAN = "prune.json"


class RepositoryError(OperationError):
    """A repository that cannot be read or written (SYS.1006 with the path and cause)."""


def check_uuid(value: str, what: str) -> str:
    # Every repository name is a UUID we made: nothing a user typed becomes a path here.
    if not UUID.fullmatch(value):
        raise InvalidArgument(f"{what} {value!r} is not a 32-hex UUID")
    return value


def listdir(path: str) -> Iterator[str]:
    """The names in a directory, sorted; none when it is not there."""
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return iter(())
    except OSError as exc:
        raise RepositoryError(f"cannot list {path}: {exc.strerror}") from exc
    return iter(sorted(names))


class RepositoryReader:
    def __init__(self, root: str) -> None:
        if not root:
            raise InvalidArgument("backup repository: empty path")
        self.root = os.path.abspath(root)

    # paths ------------------------------------------------------------------------------

    def vm_dir(self, vm_uuid: str) -> str:
        return os.path.join(self.root, check_uuid(vm_uuid, "VM uuid"))

    def backup_dir(self, vm_uuid: str, backup_id: str) -> str:
        return os.path.join(self.vm_dir(vm_uuid), check_uuid(backup_id, "backup id"))

    def file(self, manifest: BackupManifest, volume_uuid: str) -> str:
        return self.member_file(manifest.vm_uuid, manifest.backup_id, volume_uuid)

    def member_file(self, vm_uuid: str, backup_id: str, volume_uuid: str) -> str:
        return os.path.join(self.backup_dir(vm_uuid, backup_id), disk_file(volume_uuid))

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    # reading ----------------------------------------------------------------------------

    def vms(self) -> list[str]:
        return [n for n in listdir(self.root) if UUID.fullmatch(n)]

    def backups(self, vm_uuid: str | None = None) -> list[BackupManifest]:
        return self.scan(vm_uuid)[0]

    def scan(self, vm_uuid: str | None = None) -> tuple[list[BackupManifest], list[DamagedBackup]]:
        """Complete backups (partials and backups being pruned are not), oldest first, and
        the backup directories whose manifest cannot be read or is gone. The damaged are
        reported, never dropped silently: callers skip them and what reads through them
        (export takes another base, verify names them, prune refuses)."""
        out: list[BackupManifest] = []
        damaged: list[DamagedBackup] = []
        for vm in [vm_uuid] if vm_uuid else self.vms():
            vm_dir = self.vm_dir(vm)
            for name in listdir(vm_dir):
                directory = os.path.join(vm_dir, name)
                if not UUID.fullmatch(name) or not os.path.isdir(directory):
                    continue
                path = os.path.join(directory, MANIFEST)
                if os.path.isfile(path):
                    try:
                        out.append(self._read(path, vm, name))
                    except SnapgroupError as exc:
                        damaged.append(DamagedBackup(vm, name, exc.details))
                elif not os.path.exists(os.path.join(directory, PRUNE_PLAN)) and any(
                    listdir(directory)
                ):  # no plan: not a prune's hidden backup; empty: a prune's last remains
                    damaged.append(DamagedBackup(vm, name, f"{MANIFEST} is missing"))
        return sorted(out, key=lambda m: (m.created, m.backup_id)), damaged

    def get(self, backup_id: str, *, vm_uuid: str | None = None) -> BackupManifest:
        backup_id = check_uuid(backup_id, "backup id")
        for vm in [vm_uuid] if vm_uuid else self.vms():
            path = os.path.join(self.backup_dir(vm, backup_id), MANIFEST)
            if os.path.isfile(path):
                return self._read(path, vm, backup_id)
        raise NotFound(f"backup {backup_id} is not in {self.root}")

    def _read(self, path: str, vm_uuid: str, backup_id: str) -> BackupManifest:
        try:
            with open(path, "rb") as f:
                manifest = parse_manifest(f.read(), where=path)
        except OSError as exc:
            raise RepositoryError(f"cannot read {path}: {exc.strerror}") from exc
        # The directory names are what backing links resolve through: they must agree.
        if (manifest.vm_uuid, manifest.backup_id) != (vm_uuid, backup_id):
            raise InvalidArgument(
                f"{path}: names backup {manifest.backup_id} of VM {manifest.vm_uuid}"
            )
        return manifest
