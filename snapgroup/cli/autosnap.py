"""snapgroup autosnap [--dry-run] [--parallel N]: one snapshot-policy pass (the systemd
timer runs it every 15 minutes). Exit status 0 only when every VM is fine."""

from __future__ import annotations

import argparse
from typing import Any

from snapgroup.cli.context import Context
from snapgroup.cli.output import print_json, table, write_plan
from snapgroup.domain.errors import InvalidArgument
from snapgroup.ops.autosnap import DEFAULT_PARALLEL, DEFAULT_WAIT


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "autosnap",
        description="For every VM under a policy: a group when a UTC slot is due, then its "
        "policy-made groups beyond the keep counts deleted (only after a successful "
        "create; hand-made, protected and clone-read groups never). VMs in parallel; a busy "
        f"VM is waited for (--wait SECONDS, default {DEFAULT_WAIT:g}) and then reported. "
        "Tests only: SNAPGROUP_TEST_NOW=ISO8601 fixes the clock (the pass's now and the "
        "groups' dates); never set it on a real host.",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="show what would be taken and pruned (with each delete's plan), change nothing",
    )
    parser.add_argument(
        "--parallel", type=int, default=DEFAULT_PARALLEL, metavar="N", help="VMs at once"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    if args.parallel < 1:
        raise InvalidArgument(f"--parallel {args.parallel}: at least 1")
    report = ctx.engine.autosnap(
        dry_run=args.dry_run, parallel=args.parallel, wait=args.wait or None
    )
    if ctx.as_json:
        print_json(report.to_json(), ctx.out)
        return report.exit_status
    rows = []
    for r in report.vms:
        doc = r.to_json()
        taken = doc["taken"]["name"] if doc["taken"] else "-"
        problems = [e["details"] for e in (doc["error"], doc["exportError"]) if e]
        problems += [
            f"prune {p['group']['name']}: {p['error']['details']}" for p in doc["pruneErrors"]
        ]
        rows.append(
            (
                r.vm.name,
                r.state,
                ",".join(doc["due"]) or "-",
                taken,
                ",".join(g["name"] for g in doc["pruned"]) or "-",
                "; ".join(problems),
            )
        )
    done = ("WOULD TAKE", "WOULD PRUNE") if report.dry_run else ("TAKEN", "PRUNED")
    table(rows, ["VM", "STATE", "DUE", *done, "ERROR"], ctx.out)
    if report.dry_run:
        for r in report.vms:
            for plan in r.prune_plans:
                if "error" in plan:
                    ctx.out.write(f"plan of {plan['groupUuid']}: {plan['error']['details']}\n")
                else:
                    write_plan(plan, ctx.out)
    return report.exit_status
