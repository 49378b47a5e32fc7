"""snapgroup delete GROUP_UUID [--mode Permissive|Enforcing] [--dry-run]."""

from __future__ import annotations

import argparse
from typing import Any

from snapgroup.cli.context import Context
from snapgroup.cli.output import ProgressPrinter, print_json, print_plan, results_table


def register(sub: Any) -> None:
    parser = sub.add_parser("delete")
    parser.add_argument("uuid", metavar="GROUP_UUID")
    parser.add_argument(
        "--mode",
        default="Permissive",
        choices=["Permissive", "Enforcing"],
        help="Permissive (default) refuses when a check fails; Enforcing "
        "attempts every snapshot and always drops the group",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (per disk which file merges into which, live or offline, "
        "bytes; space per filesystem against free; what would be refused and why) and "
        "change nothing",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from snapgroup.ops.delete import DeleteRefused  # with the engine, not for --help

    if args.dry_run:
        plan = ctx.engine.delete_plan(args.uuid, mode=args.mode).to_json()
        return print_plan(plan, ctx.out, as_json=ctx.as_json)
    try:
        report = ctx.engine.delete(
            args.uuid, mode=args.mode, progress=ProgressPrinter("merging", ctx.err)
        )
    except DeleteRefused as refused:
        report = refused.report  # nothing was done; each ref's result says why
    if ctx.as_json:
        print_json(report.to_response(), ctx.out)
        return 1 if report.error else 0
    return results_table(report.results, report.error, ctx.out, ctx.err)
