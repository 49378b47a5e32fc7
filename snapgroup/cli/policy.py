"""snapgroup policy set NAME … | list | show NAME | remove NAME | status: snapshot
policies (snapgroup.domain.retention), run by `snapgroup autosnap`."""

from __future__ import annotations

import argparse
from typing import Any

from snapgroup.cli.context import Context
from snapgroup.cli.output import print_json, table
from snapgroup.domain.errors import InvalidArgument
from snapgroup.domain.retention import CONSISTENCIES, LABELS, Policy, Retention


def register(sub: Any) -> None:
    parser = sub.add_parser("policy")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    put = actions.add_parser(
        "set",
        help="create or replace a policy",
        description="Keep counts per UTC slot: for each label with count N, the first group "
        "of each of the N newest periods is kept. A VM under several policies keeps the "
        "largest count of each label. `snapgroup autosnap` (the systemd timer) takes and prunes.",
    )
    put.add_argument("name", metavar="NAME")
    who = put.add_mutually_exclusive_group(required=True)
    who.add_argument("--vm", nargs="+", metavar="VM", help="the VMs (names or UUIDs)")
    who.add_argument("--all", action="store_true", help="every VM of this host")
    put.add_argument("--exclude", nargs="+", default=[], metavar="VM", help="with --all")
    for label in LABELS:
        put.add_argument(
            f"--{label}", type=int, default=0, metavar="N", help=f"{label} groups kept"
        )
    put.add_argument(
        "--every", type=int, default=15, metavar="MINUTES", help="period of --frequent (15)"
    )
    put.add_argument("--consistency", choices=CONSISTENCIES, default="auto")
    put.add_argument(
        "--with-memory",
        action="store_true",
        help="memory groups: the VM's running state too (a VM that is not running then "
        "gets no group, and the pass reports it)",
    )
    put.add_argument(
        "--min-free-percent",
        type=float,
        metavar="P",
        help="take no group while a filesystem of the VM's disks has less free (pruning runs)",
    )
    put.add_argument(
        "--export-to", metavar="DIR", help="export each group taken to this backup repository"
    )
    put.add_argument("--export-keep", type=int, metavar="N", help="exports kept there")
    put.add_argument("--export-compress", action="store_true", help="export compressed (zstd)")
    actions.add_parser("list", help="list the policies")
    show = actions.add_parser("show", help="one policy")
    show.add_argument("name", metavar="NAME")
    remove = actions.add_parser("remove", help="remove a policy (the groups it took stay)")
    remove.add_argument("name", metavar="NAME")
    actions.add_parser(
        "status",
        help="per VM and slot: the newest group's age, OK/WARN/CRIT "
        "(exit status 0/1/2, nagios-style)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from snapgroup.ops.policies import record_json  # with the engine, not for --help

    action = args.action
    if action == "set":
        return _set(args, ctx)
    if action == "list":
        records = ctx.engine.policies()
        if ctx.as_json:
            print_json({"policies": [record_json(r) for r in records]}, ctx.out)
        else:
            table([_row(record_json(r)) for r in records], _HEADERS, ctx.out)
        return 0
    if action == "show":
        doc = record_json(ctx.engine.policy(args.name))
        if ctx.as_json:
            print_json({"policy": doc}, ctx.out)
        else:
            for key, value in doc.items():
                ctx.out.write(f"{key + ':':<16}{'-' if value is None else value}\n")
        return 0
    if action == "remove":
        ctx.engine.remove_policy(args.name)
        if ctx.as_json:
            print_json({"removed": args.name}, ctx.out)
        else:
            ctx.out.write(f"policy {args.name} removed; the groups it took stay\n")
        return 0
    status = ctx.engine.policy_status()
    if ctx.as_json:
        print_json(status.to_json(), ctx.out)
    else:
        rows = []
        for v in status.vms:
            for s in v.slots:
                age = "-" if s.age is None else _age(int(s.age.total_seconds()))
                rows.append((v.vm_name, str(s.kind), age, s.state))
            if v.error:
                rows.append((v.vm_name, "-", "-", f"CRIT: {v.error}"))
        table(rows, ["VM", "SLOT", "NEWEST AGE", "STATE"], ctx.out)
        ctx.out.write(f"{status.state}\n")
    return status.exit_status


def _set(args: argparse.Namespace, ctx: Context) -> int:
    from snapgroup.ops.policies import record_json

    if args.exclude and not args.all:
        raise InvalidArgument("--exclude goes with --all")
    policy = Policy(
        name=args.name,
        retention=Retention(**{label: getattr(args, label) for label in LABELS}, every=args.every),
        vms=None if args.all else tuple(args.vm),
        exclude=tuple(args.exclude),
        consistency=args.consistency,
        min_free_percent=args.min_free_percent,
        with_memory=args.with_memory,
    )
    record, new = ctx.engine.set_policy(
        policy,
        export_to=args.export_to,
        export_keep=args.export_keep,
        export_compress=args.export_compress,
    )
    if ctx.as_json:
        print_json({"policy": record_json(record), "created": new}, ctx.out)
    else:
        ctx.out.write(f"policy {record.policy.name} {'created' if new else 'replaced'}\n")
    return 0


_HEADERS = ["NAME", "VMS", "KEEP", "CONSISTENCY", "MIN FREE %"]


def _row(doc: dict[str, Any]) -> tuple[object, ...]:
    vms = "all" + (f" but {','.join(doc['exclude'])}" if doc["exclude"] else "")
    if not doc["all"]:
        vms = ",".join(doc["vms"])
    keep = " ".join(
        f"{label}={doc[label]}" + (f"/{doc['every']}m" if label == "frequent" else "")
        for label in LABELS
        if doc[label]
    )
    return (doc["name"], vms, keep, doc["consistency"], doc["minFreePercent"])


def _age(seconds: int) -> str:
    sign, seconds = ("-" if seconds < 0 else ""), abs(seconds)
    days, rest = divmod(seconds, 86400)
    return sign + (f"{days}d" if days else "") + f"{rest // 3600}h{rest % 3600 // 60:02d}m"
