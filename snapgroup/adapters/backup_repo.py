"""A backup repository in a directory: file I/O only (qemu-img runs in qemu_img.py).
BackupRepo keeps the layout: where each backup is, which are listed, how an export is
published and a prune's state kept. Its files one at a time (checksums, durable writes)
are backup_files.py's, the holds of thin restores backup_holds.py's.

Layout (format 1)::

    <DIR>/<vm-uuid>/<backup-id>/manifest.json
    <DIR>/<vm-uuid>/<backup-id>/<volume-uuid>.qcow2   backing "../<base-id>/<volume-uuid>.qcow2"
    <DIR>/<vm-uuid>/.partial-<backup-id>/             an export being written (never listed)
    <DIR>/<vm-uuid>/<backup-id>/prune.json            a prune in progress (backup hidden)
    <DIR>/<vm-uuid>/<backup-id>/hold-<id>.json         disks restored with --keep-chain on it

A backup is written into `.partial-<id>/` (a sibling, so its relative backing names
already resolve), every file fsynced, then the directory renamed to `<id>` and the VM
directory fsynced: a backup is listed only once complete. A leftover partial is an
interrupted export: `discard_partials` removes it and the next export redoes it.

How the files are made (qemu-img 7.2, found by experiment; tests/adapters/test_backup_repo.py
keeps each point true):

- Full export: `qemu-img convert -U -W -m 16 -f qcow2 -O qcow2 S_G out`: reads the whole
  chain under the group's snapshot file S_G (-U: a running QEMU holds it read-only as a
  backing file and never writes it), writes a standalone file, no compression. -W let
  the copy run ~2x faster in a noisy 1 GiB trial (0.8-4 s vs 1.7-8 s: shared host).
- Incremental export over base A (A's file S_A lies in S_G's chain; L1..Lk are the files
  above S_A up to S_G): `convert -B` copies ONLY its source's top layer (qemu-img passes
  the source's own backing as the block-status base), so a single convert of S_G with
  -B misses L1..L(k-1): `qemu-img compare` reported "Content mismatch at offset 0" for
  k=2, whether S_G's chain was real, cut at S_A with a json: spec (`backing: null`), or
  re-pointed at A's export. What works: `convert -U -B ../<A>/<vol>.qcow2 -F qcow2 L1 out`,
  then each next layer onto the previous copy, then `qemu-img commit -b out` of the top
  copy (one step when k=1, the usual case). Zero clusters stay zero clusters (a guest's
  discard or write-zeroes over base data is kept, not read through to the base); the
  export chain compares identical to S_G and holds only L1..Lk's clusters (64 MiB disk,
  5 MiB changed over 2 layers: 2.4 MiB file vs 33 MiB full). The other candidate, an
  empty overlay on S_G safe-rebased onto S_A then `rebase -u` onto the export, is also
  correct but writes zero clusters as data (4.5 MiB for the same change).
- `-B` takes a name relative to the new file's directory and writes it as is: the
  repository can be moved (the adapter test moves one and compares again).
- Verify: sha256 of each file (covers its header, so a changed backing name too) and
  `qemu-img check` of each file alone (json: spec with `backing: null`, exit 2 =
  corruptions with the report on stdout); a missing base is found by existence.
- Prune (merge backup B, base Z or none, into its children C1..Cn): hide B (its
  manifest renamed aside, prune.json holds the plan), then every child but the main one
  is rebased safely onto Z (`qemu-img rebase -b ../Z/f` or -b '' : a copy of B's clusters
  it does not shadow; its view never changes), then the main child's clusters are
  committed into B's file (`qemu-img commit -b B C`, C untouched) and B's file is renamed
  over C's (atomic). C reads the same at every moment: before the rename through B's
  file (which now holds C's view, shadowed by C anyway), after it from the merged file.
  Re-running any step after a crash gives the same result; manifests are rewritten last.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress

from snapgroup.adapters.backup_files import (
    file_problem,
    file_size,
    fsync_dir,
    fsync_file,
    seal_file,
    sha256_file,
    write_atomic,
)
from snapgroup.adapters.backup_holds import read_holds, read_mounts, remove_hold, write_hold
from snapgroup.adapters.backup_scan import (
    PRUNE_PLAN,
    UUID,
    RepositoryError,
    RepositoryReader,
    check_uuid,
    listdir,
)
from snapgroup.domain.backup_manifest import MANIFEST, BackupManifest, Partial
from snapgroup.domain.errors import InvalidArgument, OperationError
from snapgroup.domain.manifest_rules import check_manifest

# RepositoryError (backup_scan.py) and the file functions (backup_files.py): imported
# from here too.
__all__ = ["BackupRepo", "RepositoryError", "file_problem", "file_size", "sha256_file"]

PARTIAL_PREFIX = ".partial-"
PRUNING_MANIFEST = "manifest.pruning.json"


class BackupRepo(RepositoryReader):
    """The repository read (RepositoryReader: paths, listing, manifests) and written."""

    # writing an export ------------------------------------------------------------------

    def begin(self, vm_uuid: str, backup_id: str) -> Partial:
        """A fresh `.partial-<id>/` (a stale one of the same id is removed first)."""
        path = os.path.join(
            self.vm_dir(vm_uuid), PARTIAL_PREFIX + check_uuid(backup_id, "backup id")
        )
        if os.path.exists(self.backup_dir(vm_uuid, backup_id)):
            raise OperationError(f"backup {backup_id} already exists in {self.root}")
        try:
            os.makedirs(self.vm_dir(vm_uuid), mode=0o700, exist_ok=True)
            if os.path.exists(path):
                shutil.rmtree(path)
            os.mkdir(path, 0o700)
        except OSError as exc:
            raise RepositoryError(f"cannot create {path}: {exc.strerror}") from exc
        return Partial(vm_uuid, backup_id, path)

    def publish(self, partial: Partial, manifest: BackupManifest) -> None:
        """Make the backup visible: fsync its files, write its manifest, rename the
        directory into place, fsync the VM directory. Before the rename nothing lists it."""
        check_manifest(manifest, where=f"backup {manifest.backup_id}")
        if (manifest.vm_uuid, manifest.backup_id) != (partial.vm_uuid, partial.backup_id):
            raise InvalidArgument("manifest and partial name different backups")
        try:
            for d in manifest.disks:
                fsync_file(partial.file(d.volume_uuid))
            write_atomic(os.path.join(partial.path, MANIFEST), manifest.to_json())
            final = self.backup_dir(manifest.vm_uuid, manifest.backup_id)
            os.rename(partial.path, final)
            fsync_dir(self.vm_dir(manifest.vm_uuid))
        except OSError as exc:
            raise RepositoryError(
                f"cannot publish backup {manifest.backup_id}: {exc.strerror}"
            ) from exc

    def discard(self, partial: Partial) -> None:
        """Remove an unpublished export. A file appearing meanwhile (a tool of a killed
        export finishing its last call) fails rmtree with ENOTEMPTY: tried again."""
        for attempt in range(5):
            try:
                shutil.rmtree(partial.path)
                return
            except FileNotFoundError:
                return
            except OSError as exc:
                if exc.errno != errno.ENOTEMPTY or attempt == 4:
                    raise RepositoryError(
                        f"cannot remove the unfinished export {partial.path}: {exc.strerror}"
                    ) from exc
                time.sleep(0.1 * (attempt + 1))

    def partials(self, vm_uuid: str) -> list[str]:
        """Backup ids of interrupted exports of this VM."""
        return [
            n[len(PARTIAL_PREFIX) :]
            for n in listdir(self.vm_dir(vm_uuid))
            if n.startswith(PARTIAL_PREFIX) and UUID.fullmatch(n[len(PARTIAL_PREFIX) :])
        ]

    def partial(self, vm_uuid: str, backup_id: str) -> Partial:
        """The partial of export `backup_id` (whether or not it exists)."""
        name = PARTIAL_PREFIX + check_uuid(backup_id, "backup id")
        return Partial(vm_uuid, backup_id, os.path.join(self.vm_dir(vm_uuid), name))

    def discard_partials(self, vm_uuid: str) -> list[str]:
        """Remove interrupted exports; their ids."""
        ids = self.partials(vm_uuid)
        for backup_id in ids:
            self.discard(self.partial(vm_uuid, backup_id))
        return ids

    def rewrite_manifest(self, manifest: BackupManifest) -> None:
        """Replace a listed backup's manifest atomically (prune changes chains)."""
        check_manifest(manifest, where=f"backup {manifest.backup_id}")
        path = os.path.join(self.backup_dir(manifest.vm_uuid, manifest.backup_id), MANIFEST)
        try:
            write_atomic(path, manifest.to_json())
        except OSError as exc:
            raise RepositoryError(f"cannot write {path}: {exc.strerror}") from exc

    # prune bookkeeping -------------------------------------------------------------------

    def hide_for_prune(self, manifest: BackupManifest, plan: Mapping[str, object]) -> None:
        """Record the prune plan in the backup's directory, then unlist it (its manifest
        renamed aside): from here its files may change and nothing may read it."""
        directory = self.backup_dir(manifest.vm_uuid, manifest.backup_id)
        try:
            write_atomic(os.path.join(directory, PRUNE_PLAN), json.dumps(plan, indent=2) + "\n")
            os.rename(os.path.join(directory, MANIFEST), os.path.join(directory, PRUNING_MANIFEST))
            fsync_dir(directory)
        except OSError as exc:
            raise RepositoryError(
                f"cannot hide backup {manifest.backup_id}: {exc.strerror}"
            ) from exc

    def pending_prunes(self, vm_uuid: str) -> list[tuple[BackupManifest, dict[str, object]]]:
        """Prunes an interrupted process left: the hidden manifest and its plan."""
        out: list[tuple[BackupManifest, dict[str, object]]] = []
        vm_dir = self.vm_dir(vm_uuid)
        for name in listdir(vm_dir):
            plan_path = os.path.join(vm_dir, name, PRUNE_PLAN)
            if not (UUID.fullmatch(name) and os.path.isfile(plan_path)):
                continue
            hidden = os.path.join(vm_dir, name, PRUNING_MANIFEST)
            manifest_path = (
                hidden if os.path.isfile(hidden) else os.path.join(vm_dir, name, MANIFEST)
            )
            with open(plan_path, "rb") as f:
                plan = json.loads(f.read())
            out.append((self._read(manifest_path, vm_uuid, name), plan))
        return out

    def move_file(self, src: str, dst: str) -> None:
        """Rename within the repository, atomically replacing `dst`; both directories fsynced."""
        try:
            os.rename(src, dst)
            fsync_dir(os.path.dirname(dst))
            fsync_dir(os.path.dirname(src))
        except OSError as exc:
            raise RepositoryError(f"cannot rename {src} to {dst}: {exc.strerror}") from exc

    def remove_backup_dir(self, vm_uuid: str, backup_id: str) -> None:
        """Drop a hidden backup's directory; the plan goes last so a crash midway still
        finds it pending."""
        directory = self.backup_dir(vm_uuid, backup_id)
        with suppress(FileNotFoundError):
            for name in sorted(os.listdir(directory), key=lambda n: n == PRUNE_PLAN):
                os.remove(os.path.join(directory, name))
            os.rmdir(directory)
        fsync_dir(self.vm_dir(vm_uuid))

    # holds: disks restored with --keep-chain (backup_holds.py) ------------------------------

    def hold(self, manifest: BackupManifest, holder: str, files: Sequence[str]) -> None:
        """`<backup-dir>/hold-<holder>.json`: these files read this backup's (nothing is
        recorded on a read-only repository: no prune through this mount can change it)."""
        write_hold(self.backup_dir(manifest.vm_uuid, manifest.backup_id), holder, files)

    def holds(self, manifest: BackupManifest) -> dict[str, list[str]]:
        return read_holds(self.backup_dir(manifest.vm_uuid, manifest.backup_id))

    def hold_mount(self, manifest: BackupManifest, holder: str, mount: dict[str, str]) -> None:
        backup_dir = self.backup_dir(manifest.vm_uuid, manifest.backup_id)
        write_hold(backup_dir, holder, [], mount=mount)

    def mounts(self, manifest: BackupManifest) -> dict[str, dict[str, str]]:
        return read_mounts(self.backup_dir(manifest.vm_uuid, manifest.backup_id))

    def release(self, manifest: BackupManifest, holder: str) -> None:
        remove_hold(self.backup_dir(manifest.vm_uuid, manifest.backup_id), holder)

    def open_to_qemu(self, files: Sequence[str]) -> None:
        # Here, not at import: a listing never runs it (setfacl, subprocess: ~7 ms).
        from snapgroup.adapters.qemu_access import open_to, qemu_user

        user = qemu_user()  # None: QEMU runs as root, or as us (we are not root)
        if user is not None:
            open_to(self.root, files, user)

    # files (the BackupStore port's) -------------------------------------------------------

    def file_problem(self, path: str, sha256: str, piece_size: int | None) -> str | None:
        return file_problem(path, sha256, piece_size)

    def sha256(self, path: str) -> str:
        try:
            return sha256_file(path)
        except OSError as exc:
            raise RepositoryError(f"cannot read {path}: {exc.strerror}") from exc

    def seal(self, path: str) -> str:
        """fsync a file just written and read its checksum, side by side."""
        return seal_file(path)

    def size(self, path: str) -> int:
        return file_size(path)
