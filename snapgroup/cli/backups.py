"""snapgroup backups --at DIR [--vm VM] [--tree]."""

from __future__ import annotations

import argparse
import os
from typing import Any

from snapgroup.cli.context import Context
from snapgroup.cli.output import print_json, table
from snapgroup.domain.backup_manifest import BackupManifest


def register(sub: Any) -> None:
    parser = sub.add_parser("backups")
    parser.add_argument("--at", required=True, metavar="DIR", help="the repository")
    parser.add_argument("--vm", help="only this VM's (name or UUID)")
    parser.add_argument("--tree", action="store_true", help="each backup under its base")
    # Recovered here, only when the journal is not clean (run): else no engine at all.
    parser.set_defaults(run=run, paths=("at",), skip_auto_recover=True)


def _base(m: BackupManifest) -> str | None:
    return m.disks[0].base_backup_id if m.disks else None


def run(args: argparse.Namespace, ctx: Context) -> int:
    # Manifests only: no engine (libvirt, the store and their imports, ~20 times the
    # listing's own time), as Engine.scan_backups would list them with its default
    # repositories; the engine only to finish an interrupted operation first.
    from snapgroup.adapters.backup_repo import BackupRepo
    from snapgroup.cli.quick import journal_clean
    from snapgroup.ops.backup_listing import scan

    if not journal_clean(args.db, os.environ):
        ctx.engine.recover()
    found, damaged = scan(BackupRepo, args.at, args.vm)
    if ctx.as_json:
        doc = {"backups": [m.summary() for m in found], "damaged": [d.to_dict() for d in damaged]}
        print_json(doc, ctx.out)
        return 0
    for d in damaged:  # not listed, never silently: `verify-backup` names what it breaks
        ctx.err.write(
            f"warning: backup {d.backup_id} of VM {d.vm_uuid} is not listed: {d.problem}\n"
        )
    if args.tree:
        ids = {m.backup_id for m in found}
        kids: dict[str | None, list[BackupManifest]] = {}
        for m in found:
            base = _base(m)
            kids.setdefault(base if base in ids else None, []).append(m)

        def show(m: BackupManifest, depth: int) -> None:
            kind = "full" if m.full else "incr"
            ctx.out.write(
                f"{'    ' * depth}{m.backup_id}  {m.created}  {m.vm_name}  {m.group_name}  {kind}\n"
            )
            for child in kids.get(m.backup_id, []):
                show(child, depth + 1)

        for root in kids.get(None, []):
            show(root, 0)
        return 0
    rows = [
        (
            m.backup_id,
            m.created,
            m.vm_name or m.vm_uuid,
            m.group_name,
            "full" if m.full else "incremental",
            sum(d.bytes_written for d in m.disks),
        )
        for m in found
    ]
    table(rows, ["BACKUP", "CREATED", "VM", "GROUP", "KIND", "BYTES"], ctx.out)
    return 0
