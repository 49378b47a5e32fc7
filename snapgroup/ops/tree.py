"""A VM's restore points as a tree: which group came from which, and which one the VM
sits on now. After a revert the history branches, and nothing of it is lost.

A group's parent is the nearest group below it in its volumes' chains (followed from
its root volume's snapshot, or from its first snapshot not deleted). The current group
is the nearest one below the root volume's current top.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from snapgroup.domain.inventory import zstack_date
from snapgroup.ops.context import OpContext
from snapgroup.ops.resolve import resolve_vm
from snapgroup.store.repo import Repo
from snapgroup.store.tables import SnapshotRow


@dataclass
class TreeNode:
    uuid: str
    name: str
    create_date: datetime
    current: bool = False
    children: list[TreeNode] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "name": self.name,
            "createDate": zstack_date(self.create_date),
            "current": self.current,
            "children": [c.to_dict() for c in self.children],
        }


@dataclass(frozen=True)
class VmTree:
    vm_uuid: str
    vm_name: str | None  # None: the VM is no longer defined
    roots: tuple[TreeNode, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "vmInstanceUuid": self.vm_uuid,
            "vmName": self.vm_name,
            "tree": [r.to_dict() for r in self.roots],
        }

    def render(self) -> str:
        """Lines for a terminal, children under their parent, oldest first."""
        title = self.vm_name if self.vm_name is not None else "(no longer defined)"
        lines = [f"VM {title} ({self.vm_uuid})"]
        if not self.roots:
            lines.append("(no snapshot groups)")
        for root in self.roots:
            _render(root, "", "", lines)
        return "\n".join(lines) + "\n"


def _render(node: TreeNode, first: str, rest: str, lines: list[str]) -> None:
    mark = "  <- current" if node.current else ""
    lines.append(f"{first}{node.name}  {node.uuid}  {zstack_date(node.create_date)}{mark}")
    for i, child in enumerate(node.children):
        last = i == len(node.children) - 1
        _render(
            child,
            rest + ("└── " if last else "├── "),
            rest + ("    " if last else "│   "),
            lines,
        )


def group_tree(ctx: OpContext, vm: str) -> VmTree:
    vm_uuid, domain = resolve_vm(ctx, vm)
    with ctx.db.transaction() as session:
        repo = Repo(session)
        groups = repo.groups(vm_uuid=vm_uuid)
        volumes = repo.volumes_of_vm(vm_uuid)
        snapshots: dict[str, SnapshotRow] = {}
        for volume in volumes:
            snapshots.update((s.uuid, s) for s in repo.lineage(volume))
        refs = repo.refs_with_snapshots([g.uuid for g in groups])
    group_of = {snap.uuid: ref.group_uuid for ref, snap in refs if not snap.deleted}
    anchors: dict[str, str] = {}  # group -> the snapshot its place is read from
    for ref, snap in sorted(refs, key=lambda rs: rs[0].device_id):
        if not snap.deleted:
            anchors.setdefault(ref.group_uuid, snap.uuid)

    def group_below(snapshot_uuid: str | None, own: str | None) -> str | None:
        seen: set[str] = set()
        while snapshot_uuid is not None and snapshot_uuid not in seen:
            seen.add(snapshot_uuid)
            found = group_of.get(snapshot_uuid)
            if found is not None and found != own:
                return found
            row = snapshots.get(snapshot_uuid)
            snapshot_uuid = row.parent_uuid if row is not None else None
        return None

    root_volume = next((v for v in volumes if v.attached), None)
    current = group_below(root_volume.parent_snapshot_uuid, None) if root_volume else None
    nodes = {g.uuid: TreeNode(g.uuid, g.name, g.create_date, g.uuid == current) for g in groups}
    roots = []
    for g in groups:  # oldest first, so children come out in order
        anchor = anchors.get(g.uuid)
        parent = group_below(snapshots[anchor].parent_uuid, g.uuid) if anchor else None
        if parent is not None and parent in nodes:
            nodes[parent].children.append(nodes[g.uuid])
        else:
            roots.append(nodes[g.uuid])
    return VmTree(vm_uuid, domain.name if domain is not None else None, tuple(roots))
