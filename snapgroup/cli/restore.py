"""snapgroup restore --from DIR BACKUP (--as NEW_VM | --to-dir PATH) [--keep-chain] [--start]
[--instant [--follow]]."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from snapgroup.cli.context import Context
from snapgroup.cli.output import ProgressPrinter, print_json, table
from snapgroup.domain.errors import InvalidArgument

if TYPE_CHECKING:
    from snapgroup.ops.instant import Copying
    from snapgroup.ops.restore import Restored


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "restore",
        description="Restore a backup: --as defines a new VM from the manifest's domain "
        "XML (new UUID and MACs, disks as new UUID-named files beside the original VM's "
        "or in --disk-dir); --to-dir only writes the disk images. A backup whose chain "
        "is damaged is refused before anything is written.",
    )
    parser.add_argument("backup", metavar="BACKUP")
    parser.add_argument("--from", dest="source", required=True, metavar="DIR")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--as", dest="as_vm", metavar="NEW_VM", help="the new VM's name")
    target.add_argument(
        "--to-dir", metavar="PATH", help="write only the disk images here (made 0700 if missing)"
    )
    parser.add_argument("--disk-dir", metavar="PATH", help="with --as: where its disks go")
    parser.add_argument(
        "--keep-chain",
        action="store_true",
        help="thin overlays on the repository's files instead of standalone copies (with "
        "--as: QEMU's user is let through to those files, no one else)",
    )
    parser.add_argument("--start", action="store_true", help="with --as: start the new VM")
    add_instant_options(parser, "the repository")
    # The daemon runs it when these are absolute.
    parser.set_defaults(run=run, paths=("source", "to_dir", "disk_dir"))


def add_instant_options(parser: argparse.ArgumentParser, over: str) -> None:
    parser.add_argument(
        "--instant",
        action="store_true",
        help=f"with --start: answer once the VM runs on thin overlays over {over}, then "
        "copy its disks local in the background (libvirt block pulls; `snapgroup "
        "recover` finishes a copy cut short)",
    )
    parser.add_argument(
        "--follow", action="store_true", help="with --instant: wait for the copy, showing it"
    )
    parser.add_argument(
        "--bandwidth",
        type=int,
        metavar="MIB_S",
        help="with --instant: copy each disk at most this fast (default: as fast as it goes)",
    )


def background(args: argparse.Namespace, copying: Copying) -> dict[str, Any]:
    """The copy's document; unless it is done (--follow), its follower started."""
    doc = copying.to_dict()
    if not copying.done:
        from snapgroup.cli.instant_follow import spawn

        doc["followerPid"] = spawn(args, copying.operation)
    return doc


def say_copying(doc: dict[str, Any], ctx: Context) -> None:
    if not doc["copying"]:
        ctx.out.write("its disks are local and standalone\n")
    else:
        ctx.out.write(
            f"copying its disks local in the background (operation {doc['operationUuid']}, "
            f"follower pid {doc['followerPid']}; `snapgroup recover` finishes it if cut short)\n"
        )


def run(args: argparse.Namespace, ctx: Context) -> int:
    if args.instant:
        return _run_instant(args, ctx)
    done = ctx.engine.restore(
        args.backup,
        source=args.source,
        as_vm=args.as_vm,
        to_dir=args.to_dir,
        disk_dir=args.disk_dir,
        keep_chain=args.keep_chain,
        start=args.start,
        progress=ProgressPrinter("restoring", ctx.err),
    )
    if ctx.as_json:
        print_json({"restored": done.to_dict()}, ctx.out)
        return 0
    if done.vm_uuid:
        _say_vm(done, ctx)
    table(sorted(done.files.items()), ["DISK", "FILE"], ctx.out)
    return 0


def _say_vm(done: Restored, ctx: Context) -> None:
    ctx.out.write(f"VM {done.vm_name} ({done.vm_uuid}) is {done.state}\n")
    if done.resumed:
        ctx.out.write("resumed from the backup's memory state, at the group's moment\n")
    if done.note:
        ctx.err.write(f"note: {done.note}\n")


def _run_instant(args: argparse.Namespace, ctx: Context) -> int:
    if not (args.as_vm and args.start) or args.keep_chain:
        raise InvalidArgument("--instant needs --as NEW_VM and --start (it keeps the chain)")
    done, copying = ctx.engine.instant_restore(
        args.backup,
        source=args.source,
        as_vm=args.as_vm,
        disk_dir=args.disk_dir,
        bandwidth=args.bandwidth,
        follow=args.follow,
        progress=ProgressPrinter("copying", ctx.err) if args.follow else None,
    )
    doc = background(args, copying)
    if ctx.as_json:
        print_json({"restored": done.to_dict(), "instant": doc}, ctx.out)
        return 0
    _say_vm(done, ctx)
    say_copying(doc, ctx)
    table(sorted(done.files.items()), ["DISK", "FILE"], ctx.out)
    return 0
