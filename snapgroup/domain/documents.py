"""The seed's JSON documents of a group and its refs, from plain values (their dates
already text), and the seed's date text. Standard library only: the start-up fast path
(cli/quick.py) prints from these without importing the domain's dataclasses."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

TYPE_CHECKING = False  # not typing's: importing typing costs ~14 ms of start-up
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_EPOCH = datetime(1970, 1, 1)
_SECOND = timedelta(seconds=1)
# (UTC second, the host zone's UTC offset at that instant) -> text: the text is a pure
# function of the two. Bounded: cleared when full (a page holds a few distinct dates).
_FORMATTED: dict[tuple[int, int], str] = {}
_FORMATTED_MAX = 1 << 16


def zstack_date(moment: datetime) -> str:
    """Java's medium date format, as in the seed: "Nov 14, 2017 10:20:57 PM" (host time).
    The zone's offset for the instant is asked of the C library on every call, so a
    zone changed by time.tzset() is honoured; only the formatting (~2/3 of the cost)
    is cached."""
    utc = moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment
    seconds = (utc - _EPOCH) // _SECOND  # floor: as datetime.astimezone() takes it
    local = time.localtime(seconds)
    key = (seconds, local.tm_gmtoff)
    text = _FORMATTED.get(key)
    if text is None:
        if len(_FORMATTED) >= _FORMATTED_MAX:
            _FORMATTED.clear()
        hour = local.tm_hour
        text = _FORMATTED[key] = (
            f"{_MONTHS[local.tm_mon - 1]} {local.tm_mday}, {local.tm_year} "
            f"{hour % 12 or 12}:{local.tm_min:02d}:{local.tm_sec:02d} {'AM' if hour < 12 else 'PM'}"
        )
    return text


def ref_document(
    snapshot_uuid: str,
    group_uuid: str,
    device_id: int,
    deleted: bool,
    volume_uuid: str,
    volume_name: str,
    volume_type: str,
    install_path: str,
    snapshot_name: str,
    attached: str,
    created: str,
    changed: str,
    changed_reason: str | None,
) -> dict[str, Any]:
    """A ref's inventory, its dates already text: the one place its shape is written,
    for GroupRef and for a page built straight from rows (ops/group_views.py)."""
    return {
        "volumeSnapshotUuid": snapshot_uuid,
        "volumeSnapshotGroupUuid": group_uuid,
        "deviceId": device_id,
        "snapshotDeleted": deleted,
        "volumeUuid": volume_uuid,
        "volumeName": volume_name,
        "volumeType": volume_type,
        "volumeSnapshotInstallPath": install_path,
        "volumeSnapshotName": snapshot_name,
        "volumeLastAttachDate": attached,
        "createDate": created,
        "lastOpDate": changed,
        "snapshotStatus": "Changed" if changed_reason else "Ready",
        "statusReason": changed_reason,
    }


def group_document(
    uuid: str,
    name: str,
    description: str | None,
    vm_uuid: str,
    created: str,
    changed: str,
    refs: list[dict[str, Any]],
    consistency_type: str | None,
    frozen_filesystems: list[str],
    freeze_millis: int | None,
    consistency_note: str | None,
    policy: list[str] | None,
    policy_label: str | None,
    protected: bool,
    memory: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A group's inventory (its refs' already made, its dates text): as ref_document."""
    return {
        "uuid": uuid,
        "snapshotCount": len(refs),
        "name": name,
        "description": description,
        "vmInstanceUuid": vm_uuid,
        "createDate": created,
        "lastOpDate": changed,
        "volumeSnapshotRefs": refs,
        "consistencyType": consistency_type,
        "frozenFilesystems": frozen_filesystems,
        "freezeMillis": freeze_millis,
        "consistencyNote": consistency_note,
        "policy": policy,
        "policyLabel": policy_label,
        "protected": protected,
        "withMemory": memory is not None,
        "memory": memory,
    }


def memory_document(
    file: str | None, size: int | None, sha256: str | None, mode: str | None
) -> dict[str, Any] | None:
    """A group's memory columns as its inventory's "memory" (None: a disk-only group)."""
    if file is None:
        return None
    return {"file": file, "size": size or 0, "sha256": sha256 or "", "mode": mode or "paused"}


def _frozen(column: str | None) -> list[str]:
    """The frozen_filesystems column (JSON text): json is imported only when a group
    names some (its import, with re's, is a fifth of a read's start-up)."""
    if not column or column == "[]":
        return []
    import json

    return list(json.loads(column))


def documents_of_rows(
    views: Sequence[Sequence[Any]],
    ref_rows: Sequence[Sequence[Any]],
    text: Callable[[Any], str],
    known: Callable[[Any], str | None] = lambda raw: None,
) -> list[dict[str, Any]]:
    """The inventories of groups read as rows (the store's group_views and ref_views
    columns, dates raw): `text` makes a raw date text; `known`, the common case inline,
    a text already made (or None)."""
    refs: dict[str, list[dict[str, Any]]] = {}
    for (
        snapshot,
        group,
        device_id,
        volume,
        volume_name,
        volume_type,
        attached,
        created,
        changed,
        deleted,
        path,
        snapshot_name,
        changed_reason,
    ) in ref_rows:
        refs.setdefault(group, []).append(
            ref_document(
                snapshot,
                group,
                device_id,
                bool(deleted),  # SQLite's 0/1 when read by the driver
                volume,
                volume_name,
                volume_type,
                path,
                snapshot_name,
                known(attached) or text(attached),
                known(created) or text(created),
                known(changed) or text(changed),
                changed_reason,
            )
        )
    return [
        group_document(
            uuid,
            name,
            description,
            vm_uuid,
            text(created),
            text(changed),
            refs.get(uuid, []),
            consistency,
            _frozen(frozen),
            millis,
            note,
            sorted(policy.split(",")) if policy else None,
            label,
            bool(protected),
            memory_document(memory_file, memory_size, memory_sha256, memory_mode),
        )
        for (
            uuid,
            name,
            description,
            vm_uuid,
            created,
            changed,
            consistency,
            frozen,
            millis,
            note,
            policy,
            label,
            protected,
            memory_file,
            memory_size,
            memory_sha256,
            memory_mode,
        ) in views
    ]
