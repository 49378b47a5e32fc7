"""snapgroup create (--vm VM | --root-volume UUID) --name N [--with-memory [--live]]."""

from __future__ import annotations

import argparse
from typing import Any

from snapgroup.cli.context import Context
from snapgroup.cli.output import group_detail, print_json
from snapgroup.ops.consistency import Consistency


def register(sub: Any) -> None:
    parser = sub.add_parser("create")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--vm", help="VM name or UUID")
    target.add_argument("--root-volume", metavar="UUID", help="the VM's root volume UUID")
    parser.add_argument("--name", required=True)
    parser.add_argument("--description")
    parser.add_argument("--resource-uuid", metavar="UUID", help="the new group's UUID")
    parser.add_argument(
        "--skip-unsupported",
        action="store_true",
        help="leave out writable disks that cannot be snapshotted",
    )
    parser.add_argument(
        "--consistency",
        choices=[c.value for c in Consistency],
        default=Consistency.AUTO.value,
        help="application: freeze the guest's filesystems through its agent or fail; "
        "crash: no freeze; auto (default): application, else crash and the group says why",
    )
    parser.add_argument(
        "--with-memory",
        action="store_true",
        help="save the running VM's memory state too (a file beside its root disk): "
        "a revert resumes the VM at this moment; a stopped VM, or a memory that would "
        "not fit on that filesystem, is refused with nothing changed",
    )
    parser.add_argument(
        "--live",
        action="store_true",
        help="with --with-memory: the guest runs while most of its memory is copied "
        "(a shorter pause, a larger file when it keeps writing)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    group = ctx.engine.create(
        vm=args.vm,
        root_volume_uuid=args.root_volume,
        name=args.name,
        description=args.description,
        resource_uuid=args.resource_uuid,
        skip_unsupported=args.skip_unsupported,
        consistency=args.consistency,
        with_memory=args.with_memory,
        live=args.live,
    )
    if ctx.as_json:
        print_json({"inventory": group.to_inventory()}, ctx.out)
    else:
        group_detail(group, ctx.out)
    return 0
