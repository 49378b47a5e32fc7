"""Metadata against reality: the domain XML, `qemu-img info --backing-chain`, the files.

`repair` fixes only what is safe: it finishes interrupted operations (recover), marks
volumes that left the domain as detached, and removes overlay files snapgroup made that
no chain and no record uses. It never touches a file that holds a VM's data.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from snapgroup.engine import Engine
from snapgroup.errors import NotFound, SnapgroupError
from snapgroup.planner import expected_chain
from snapgroup.store.repo import OperationRepo, Repo
from snapgroup.store.tables import VolumeRow

_OURS = re.compile(r"^[0-9a-f]{32}\.qcow2$")  # overlays are named by UUID


@dataclass(frozen=True)
class Difference:
    vm_uuid: str
    kind: str
    detail: str
    volume_uuid: str | None = None
    repaired: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "vmInstanceUuid": self.vm_uuid,
            "volumeUuid": self.volume_uuid,
            "kind": self.kind,
            "detail": self.detail,
            "repaired": self.repaired,
        }


def verify(engine: Engine, *, vm: str | None = None, repair: bool = False) -> list[Difference]:
    if repair:
        engine.recover()
    with engine.db.transaction() as session:
        repo = Repo(session)
        if vm is not None:
            vm_uuids = [engine.hv.lookup(vm).uuid]
        else:
            host = engine.host  # another host's VMs are not in this host's libvirt
            groups = repo.groups(host=host)
            vm_uuids = sorted({g.vm_uuid for g in groups} | repo.vm_uuids(host=host))
        pending = {op.vm_uuid for op in OperationRepo(session).unfinished(host=engine.journal.host)}
    diffs: list[Difference] = []
    for vm_uuid in vm_uuids:
        if vm_uuid in pending:
            diffs.append(
                Difference(
                    vm_uuid,
                    "operation-unfinished",
                    "an interrupted operation awaits `snapgroup recover`",
                )
            )
        diffs.extend(_verify_vm(engine, vm_uuid, repair=repair))
    return diffs


def _verify_vm(engine: Engine, vm_uuid: str, *, repair: bool) -> list[Difference]:
    try:
        domain = engine.hv.lookup(vm_uuid)
    except NotFound:
        return [
            Difference(
                vm_uuid, "vm-missing", "the VM is no longer defined; its groups and files are kept"
            )
        ]
    live = domain.state.is_live
    disks = {d.target: d for d in domain.disks}
    diffs: list[Difference] = []
    known_files: set[str] = set()
    with engine.db.transaction() as session:
        repo = Repo(session)
        volumes = repo.volumes_of_vm(vm_uuid, attached_only=True)
        for volume in volumes:
            snapshots = repo.lineage(volume)
            known_files.update(s.install_path for s in snapshots)
            known_files.add(volume.install_path)
            disk = disks.get(volume.target)
            if disk is None or disk.path is None:
                diffs.append(
                    Difference(
                        vm_uuid,
                        "volume-detached",
                        f"{volume.target} is no longer attached",
                        volume.uuid,
                        repaired=repair,
                    )
                )
                if repair:
                    volume.attached = False
                    repo.add(volume)
                continue
            if disk.path != volume.install_path:
                diffs.append(
                    Difference(
                        vm_uuid,
                        "top-mismatch",
                        f"{volume.target} is on {disk.path}, the metadata says "
                        f"{volume.install_path}",
                        volume.uuid,
                    )
                )
                continue
            diffs.extend(_verify_chain(engine, volume, expected_chain(volume, snapshots), live))
    diffs.extend(_orphans(engine, vm_uuid, volumes, known_files, live, repair=repair))
    return diffs


def _verify_chain(
    engine: Engine, volume: VolumeRow, expected: list[str], live: bool
) -> list[Difference]:
    missing = [p for p in expected if not engine.images.exists(p)]
    if missing:
        return [
            Difference(
                volume.vm_uuid, "file-missing", f"missing: {', '.join(missing)}", volume.uuid
            )
        ]
    try:
        actual = [layer.path for layer in engine.images.chain(volume.install_path, shared=live)]
    except SnapgroupError as exc:
        return [Difference(volume.vm_uuid, "chain-unreadable", exc.details, volume.uuid)]
    if actual[: len(expected)] != expected:
        return [
            Difference(
                volume.vm_uuid,
                "chain-mismatch",
                f"real chain {actual}, recorded {expected}",
                volume.uuid,
            )
        ]
    return []


def _orphans(
    engine: Engine,
    vm_uuid: str,
    volumes: list[VolumeRow],
    known: set[str],
    live: bool,
    *,
    repair: bool,
) -> list[Difference]:
    """UUID-named overlays beside the VM's volumes that no chain and no record uses."""
    in_chains: set[str] = set(known)
    for volume in volumes:
        try:
            in_chains.update(
                layer.path for layer in engine.images.chain(volume.install_path, shared=live)
            )
        except SnapgroupError:
            continue
    with engine.db.transaction() as session:
        recorded = Repo(session).all_install_paths()
    diffs = []
    for directory in sorted({os.path.dirname(v.install_path) for v in volumes}):
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            if not _OURS.match(name) or path in in_chains or path in recorded:
                continue
            backing = _backing(engine, path)
            if backing not in in_chains:
                continue  # not on top of this VM's files: not ours to judge
            if repair:
                engine.images.remove(path)
            diffs.append(
                Difference(
                    vm_uuid, "orphan-file", f"{path}: an overlay no chain uses", repaired=repair
                )
            )
    return diffs


def _backing(engine: Engine, path: str) -> str | None:
    try:
        return engine.images.chain(path, shared=True)[0].backing
    except SnapgroupError:
        return None
