"""Holds on a backup: disks restored with --keep-chain read its files, and say so in
`<backup-dir>/hold-<holder>.json` ({"files": [...]}, 0600 like the manifest). Beside the
manifest, a hold goes with the backup's directory; a prune refuses to merge a held
backup while any of those disks still reads its files, and removes a hold it finds
stale. A `snapgroup mount` of a backup holds each backup its chain reads the same way,
its document naming the mount instead ({"files": [], "mount": "<mountpoint>", "host":
...}): read apart (read_mounts), never taken for a stale disks' hold. QEMU's own way
into those files is qemu_access.py's."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Sequence

from snapgroup.adapters.backup_files import write_atomic
from snapgroup.adapters.backup_scan import UUID, RepositoryError, check_uuid, listdir

HOLD_PREFIX = "hold-"


def write_hold(
    backup_dir: str, holder: str, files: Sequence[str], *, mount: dict[str, str] | None = None
) -> None:
    """Record that `files` read the backup in `backup_dir` (or, with `mount`: its
    mountpoint and host, that a mount does). Nothing is recorded on a read-only
    repository: no prune through this mount can change it."""
    path = _hold_path(backup_dir, holder)
    doc: dict[str, object] = {"files": list(files)}
    if mount is not None:
        doc["mount"] = dict(mount)
    try:
        write_atomic(path, json.dumps(doc, indent=2) + "\n")
    except OSError as exc:
        if exc.errno == errno.EROFS:  # nothing prunes through a read-only mount
            return
        raise RepositoryError(f"cannot write {path}: {exc.strerror}") from exc


def read_holds(backup_dir: str) -> dict[str, list[str]]:
    """holder -> the files it recorded (mounts' holds apart: read_mounts)."""
    return {h: files for h, (files, mount) in _read(backup_dir).items() if mount is None}


def read_mounts(backup_dir: str) -> dict[str, dict[str, str]]:
    """holder -> the mount that holds the backup (mountpoint, host)."""
    return {h: mount for h, (_, mount) in _read(backup_dir).items() if mount is not None}


def _read(backup_dir: str) -> dict[str, tuple[list[str], dict[str, str] | None]]:
    out: dict[str, tuple[list[str], dict[str, str] | None]] = {}
    for name in listdir(backup_dir):
        holder = name.removeprefix(HOLD_PREFIX).removesuffix(".json")
        if not (name.startswith(HOLD_PREFIX) and UUID.fullmatch(holder)):
            continue
        path = os.path.join(backup_dir, name)
        try:
            with open(path, "rb") as f:
                doc = json.loads(f.read())
            files = [str(x) for x in doc["files"]]
            mount = doc.get("mount")
            if mount is not None:
                mount = {str(k): str(v) for k, v in mount.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RepositoryError(f"cannot read the hold {path}: {exc}") from exc
        out[holder] = (files, mount)
    return out


def remove_hold(backup_dir: str, holder: str) -> None:
    """Drop a stale hold (one already gone is fine)."""
    path = _hold_path(backup_dir, holder)
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise RepositoryError(f"cannot remove the stale hold {path}: {exc.strerror}") from exc


def _hold_path(backup_dir: str, holder: str) -> str:
    return os.path.join(backup_dir, f"{HOLD_PREFIX}{check_uuid(holder, 'holder')}.json")
