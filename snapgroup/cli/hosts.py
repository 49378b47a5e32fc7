"""snapgroup hosts [--retire HOST [--force]]: the hosts of a shared store, their leases
and the VMs they own; a host down for good retired."""

from __future__ import annotations

import argparse
from typing import Any

from snapgroup.cli.context import Context
from snapgroup.cli.output import print_json, table
from snapgroup.domain.errors import InvalidArgument
from snapgroup.domain.ownership import HostView


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "hosts",
        description="Every host that holds a lease in the store or owns a VM's rows. A "
        "host renews its lease while it operates or serves; another host takes a VM over "
        "when the VM runs there and its owner's lease has expired or its owner reports "
        "it not running.",
    )
    parser.add_argument(
        "--retire",
        metavar="HOST",
        help="HOST is down for good: the hosts that define its VMs may take them over, "
        "stopped or running (refused while its lease is live or its last report names "
        "VMs it owns running); the requests queued for it fail",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="with --retire: whatever its last report says (it is down for good)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    if args.force and args.retire is None:
        raise InvalidArgument("--force goes with --retire HOST")
    if args.retire is not None:
        return _retire(args.retire, args.force, ctx)
    views = ctx.engine.hosts()
    if ctx.as_json:
        print_json({"inventories": [v.to_dict() for v in views]}, ctx.out)
        return 0
    rows = []
    for view in views:
        lease = view.lease
        running = lease.running if lease is not None else None
        rows.append(
            (
                view.name + (" (this host)" if view.name == ctx.engine.host else ""),
                _state(view),
                lease.expires.strftime("%Y-%m-%d %H:%M:%S") if lease else None,
                lease.address if lease else None,
                ", ".join(view.vms) or None,
                "?" if running is None else (", ".join(sorted(running)) or None),
                view.queued or None,
            )
        )
    headers = ["HOST", "LEASE", "UNTIL (UTC)", "SERVES", "OWNS VMS", "RUNS VMS", "QUEUED"]
    table(rows, headers, ctx.out)
    return 0


def _state(view: HostView) -> str:
    if view.lease is None:
        return "none"
    if view.live:
        return "live"
    return "retired" if view.lease.retired is not None else "expired"


def _retire(name: str, force: bool, ctx: Context) -> int:
    retired = ctx.engine.retire_host(name, force=force)
    if ctx.as_json:
        document = {
            "host": retired.host,
            "vmInstanceUuids": list(retired.vms),
            "failedJobs": list(retired.failed_jobs),
        }
        print_json(document, ctx.out)
        return 0
    owns = ", ".join(retired.vms) or "no VMs"
    ctx.out.write(f"retired host {retired.host} (it owned {owns})\n")
    if retired.failed_jobs:
        ctx.out.write(f"failed {len(retired.failed_jobs)} request(s) queued for it\n")
    return 0
