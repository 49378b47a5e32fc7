"""snapgroup hosts: the hosts of a shared store, their leases and the VMs they own."""

from __future__ import annotations

import argparse
from typing import Any

from snapgroup.cli.context import Context
from snapgroup.cli.output import print_json, table


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "hosts",
        description="Every host that holds a lease in the store or owns a VM's rows. A "
        "host renews its lease while it operates or serves; another host takes a VM over "
        "when the VM runs there and its owner's lease has expired or its owner reports "
        "it not running.",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
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
                "none" if lease is None else ("live" if view.live else "expired"),
                lease.expires.strftime("%Y-%m-%d %H:%M:%S") if lease else None,
                lease.address if lease else None,
                ", ".join(view.vms) or None,
                "?" if running is None else (", ".join(sorted(running)) or None),
            )
        )
    headers = ["HOST", "LEASE", "UNTIL (UTC)", "SERVES", "OWNS VMS", "RUNS VMS"]
    table(rows, headers, ctx.out)
    return 0
